"""fp32 linear layers with weights pre-packed for oneDNN (CPU), the default on CPU.

Packing once at load time spares the GEMM from re-laying out each weight on every call (~20% faster at the batch
sizes of decoding), and oneDNN's packed kernel gives every row the same result whatever the batch size, which
keeps a seeded sample independent of the requests it shares a step with.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

PACK_FOR_BATCH = 32


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        weight = linear.weight.detach().float().contiguous()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, PACK_FOR_BATCH), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear in `model` by a PackedLinear (a tied lm_head gets its own packed copy)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, PackedLinear(child))
        else:
            pack_linears(child)
    return model

"""CPU linear layers that replace nn.Linear after loading.

- `PackedLinear` (the default for fp32 on CPU): weights pre-packed for oneDNN once at load time, which spares the
  GEMM from re-laying out each weight on every call (~1.4x decode throughput at n=32 here), and oneDNN's packed
  kernel gives every row the same result whatever the batch size, so a seeded sample does not depend on the
  requests it shares a step with.
- `Int8Linear` (`quantization="int8"`, opt-in, lossy): fbgemm's dynamic int8 GEMM. fbgemm quantizes activations
  with one range per call, which would make a row's result depend on the other rows in the batch, so each row is
  scaled to max |x| = 1 and two sentinel columns (+1, -1, with zero weights) pin the range to exactly [-1, 1]:
  every element is quantized on its own. Weights use 7 bits per output channel so that 8-bit activations cannot
  saturate fbgemm's int16 pair sums.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACK_FOR_BATCH = 32
WEIGHT_LEVELS = 63


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Replace every nn.Linear in `model` by `make(linear)` (a tied lm_head gets its own copy)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, make(child))
        else:
            replace_linears(child, make)
    return model


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


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.out_features, self.in_features = weight.shape
        padded = F.pad(weight, (0, 2))
        scales = (padded.abs().amax(dim=1) / WEIGHT_LEVELS).clamp_min(1e-12).double()
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensor constructors are deprecated, not gone
            qweight = torch.quantize_per_channel(padded, scales, zeros, axis=0, dtype=torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.register_buffer("_sentinel", torch.tensor([1.0, -1.0]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        norms = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        augmented = torch.cat([rows / norms, self._sentinel.expand(rows.shape[0], 2)], dim=1)
        out = torch.ops.quantized.linear_dynamic(augmented, self._packed, False).mul_(norms)
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

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
- `BF16Linear` (`quantization="bf16"`, opt-in, lossy; CPUs with avx512_bf16 or AMX-BF16): weights stored bf16 and
  pre-packed for oneDNN, activations rounded to bf16 at the linear, bf16 dot products accumulated in fp32 by oneDNN,
  the output (rounded to bf16) returned as fp32; everything outside the linears stays fp32. Rows were batch-invariant
  in the tests here (oneDNN's packed bf16 kernel), as for the fp32 packed path.
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


class BF16Linear(nn.Module):
    """nn.Linear computed in bf16 by oneDNN: [..., in_features] fp32 -> [..., out_features] fp32.

    Weights (and bias) are stored bf16, pre-packed for oneDNN when it can pack (else plain `F.linear` in bf16).
    Error: ~3e-3 relative to fp32 (bf16's 8-bit mantissa on inputs, weights and the output)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        weight = linear.weight.detach().to(torch.bfloat16).contiguous()
        self.packed = packing_available()
        if self.packed:
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_FOR_BATCH)
        self.register_buffer("weight", weight, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16).contiguous()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.packed:
            out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        else:
            out = F.linear(rows, self.weight, self.bias)
        return out.float().reshape(*x.shape[:-1], self.out_features)


def bf16_supported() -> bool:
    """Whether this CPU has bf16 dot products (avx512_bf16 or amx_bf16 in /proc/cpuinfo) and oneDNN can use them."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        flags = []
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and torch.backends.mkldnn.is_available()

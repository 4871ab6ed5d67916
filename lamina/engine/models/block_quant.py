"""Linear layers that compute straight from a GGUF file's Q4_0/Q4_1/Q8_0 blocks (lamina/engine/kernels/qgemm.cpp).

The weights stay in their 4.5- or 8.5-bit form in memory and are expanded to fp32 inside the GEMM, with the same
fp32 arithmetic as the reference dequantization: the values multiplied are exactly the dequantized ones, but each
step reads 4-7x fewer bytes of weights. Rows are batch-invariant (see the kernel).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from torch import Tensor, nn

from lamina.engine.loader.types import NATIVE_QUANTS, QuantizedWeight

PANEL = 16
BLOCK = 32


@dataclass(slots=True)
class Codes:
    """W[n, k] = scales[n, k // 32] * codes[n, k] (+ offsets[n, k // 32] for unsigned 4-bit codes)."""
    codes: np.ndarray  # [N, K] uint8 0..15 (4-bit) or int8
    scales: np.ndarray  # [N, K / 32] float32
    offsets: np.ndarray | None

    @property
    def four_bit(self) -> bool:
        return self.offsets is not None


def _fp16(blocks: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 4-bit layout: element j of a block is the low nibble of byte j, element j + 16 the high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def codes_of(weight: QuantizedWeight) -> Codes:
    n, k = weight.shape
    if weight.qtype == Q.Q4_1:
        blocks = weight.rows.reshape(n, k // BLOCK, 20)
        return Codes(_nibbles(blocks[..., 4:]).reshape(n, k), _fp16(blocks, 0), _fp16(blocks, 2))
    if weight.qtype == Q.Q4_0:
        blocks = weight.rows.reshape(n, k // BLOCK, 18)
        signed = _nibbles(blocks[..., 2:]).astype(np.int8) - np.int8(8)
        return Codes(signed.reshape(n, k), _fp16(blocks, 0), None)
    if weight.qtype == Q.Q8_0:
        blocks = weight.rows.reshape(n, k // BLOCK, 34)
        return Codes(np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(n, k), _fp16(blocks, 0), None)
    raise ValueError(f"no native kernel for {weight.qtype.name}")


def _panels(a: np.ndarray, rows: int) -> np.ndarray:
    """[N, C] -> [N/16, C, 16], zero-padding N to whole panels."""
    a = np.pad(a, ((0, rows - a.shape[0]), (0, 0)))
    return np.ascontiguousarray(a.reshape(rows // PANEL, PANEL, -1).transpose(0, 2, 1))


class BlockQuantLinear(nn.Module):
    def __init__(self, parts: list[QuantizedWeight], bias: Tensor | None, kernel: ModuleType) -> None:
        """`parts` are stacked along out_features (fused q/k/v or gate/up); all share one 4- or 8-bit kind."""
        super().__init__()
        pieces = [codes_of(p) for p in parts]
        if len({p.four_bit for p in pieces}) != 1:
            raise ValueError("fused parts mix 4-bit-with-offset and signed codes")
        codes = np.concatenate([p.codes for p in pieces])
        self.out_features, self.in_features = codes.shape
        rows = -(-self.out_features // PANEL) * PANEL
        panel_codes = _panels(codes, rows)
        if pieces[0].four_bit:
            panel_codes = panel_codes[..., : PANEL // 2] | (panel_codes[..., PANEL // 2 :] << 4)
            offsets = torch.from_numpy(_panels(np.concatenate([p.offsets for p in pieces]), rows))
        else:
            offsets = torch.empty(0)
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(panel_codes).view(np.uint8)), persistent=False)
        self.register_buffer("scales", torch.from_numpy(_panels(np.concatenate([p.scales for p in pieces]), rows)), persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous(), persistent=False)
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        out = self.kernel.block_quant_linear(rows, self.codes, self.scales, self.offsets, self.bias, self.out_features)
        return out.reshape(*x.shape[:-1], self.out_features)


def native_parts(quantized: dict[str, QuantizedWeight], names: list[str]) -> list[QuantizedWeight] | None:
    """The stored blocks of `names` when all of them can run on the native kernel together, else None."""
    parts = [quantized.get(name) for name in names]
    if any(p is None or p.qtype not in NATIVE_QUANTS or p.shape[1] % BLOCK for p in parts):
        return None
    if len({p.qtype == Q.Q4_1 for p in parts}) != 1 or len({p.shape[1] for p in parts}) != 1:
        return None
    return parts


def use_block_quant_linears(model: nn.Module, quantized: dict[str, QuantizedWeight], kernel: ModuleType) -> int:
    """Swap every linear of `model` whose stored weights the kernel can use; returns how many were swapped."""
    swapped = 0
    for parent, attr, names in model.linear_sources():
        parts = native_parts(quantized, names)
        if parts is not None:
            setattr(parent, attr, BlockQuantLinear(parts, getattr(parent, attr).bias, kernel))
            swapped += 1
    return swapped

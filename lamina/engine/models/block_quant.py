"""Linear layers that compute straight from a GGUF file's Q4_0/Q4_1/Q5_0/Q8_0/Q4_K/Q5_K/Q6_K blocks (kernels/qgemm.cpp).

The weights stay quantized in memory (4-bit codes for Q4_1 and Q4_K, a byte per code otherwise (Q5_0 included), fp32 scales and
offsets per 16 or 32 codes) and are expanded to fp32 inside the GEMM, with the same fp32 arithmetic as the
reference dequantization: the values multiplied are exactly the dequantized ones, but each step reads 3-5x fewer
bytes of weights. Rows are batch-invariant (see the kernel). Parts of one fused linear in different formats share
the widest layout (Q4_K q/k beside a Q6_K v: all 8-bit codes, scales per 16).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as Q
from torch import Tensor, nn

from lamina.engine.loader.types import NATIVE_QUANTS, QuantizedWeight
from lamina.engine.models.cpu_linear import PackedLinear, packing_available
from lamina.engine.models.linear_choice import ChoiceTable, policy
from lamina.engine.models.llama import load_linear

PANEL = 16
BLOCK = 32


@dataclass(slots=True)
class Codes:
    """W[n, k] = scales[n, k // group] * codes[n, k] (+ offsets[n, k // group] where the format has them)."""
    codes: np.ndarray  # [N, K] uint8 0..15 (4-bit with offsets) or int8
    scales: np.ndarray  # [N, K / group] float32
    offsets: np.ndarray | None
    group: int = BLOCK

    @property
    def four_bit(self) -> bool:
        return self.offsets is not None and self.codes.dtype == np.uint8

    def regrouped(self, group: int) -> Codes:
        """The same weights with one scale (and offset) per `group` k's, a divisor of this group."""
        def split(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.repeat(a, self.group // group, axis=1)
        return Codes(self.codes, split(self.scales), split(self.offsets), group)


def _fp16(blocks: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 4-bit layout: element j of a block is the low nibble of byte j, element j + 16 the high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(packed: np.ndarray, shifts: list[int], mask: int) -> np.ndarray:
    """[..., chunks, width] bytes -> [..., chunks * len(shifts), width]: each chunk's fields at `shifts`, in order."""
    fields = (packed[..., None, :] >> np.array(shifts, np.uint8)[:, None]) & np.uint8(mask)
    return fields.reshape(*packed.shape[:-2], -1, packed.shape[-1])


def _k_quant_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: per 32 k's, scale = d * sc and offset = -(dmin * m), both fp32 as the reference computes them."""
    n, nb = blocks.shape[:2]
    sc, mins = quants.Q4_K.get_scale_min(np.ascontiguousarray(blocks[..., 4:16]).reshape(-1, 12))
    scales = _fp16(blocks, 0)[..., None] * sc.reshape(n, nb, 8).astype(np.float32)
    offsets = -(_fp16(blocks, 2)[..., None] * mins.reshape(n, nb, 8).astype(np.float32))
    return scales.reshape(n, -1), offsets.reshape(n, -1)


def codes_of(weight: QuantizedWeight) -> Codes:
    n, k = weight.shape
    blocks = weight.rows.reshape(n, k // block_size(weight.qtype), -1)
    if weight.qtype == Q.Q4_1:
        return Codes(_nibbles(blocks[..., 4:]).reshape(n, k), _fp16(blocks, 0), _fp16(blocks, 2))
    if weight.qtype == Q.Q4_0:
        signed = _nibbles(blocks[..., 2:]).astype(np.int8) - np.int8(8)
        return Codes(signed.reshape(n, k), _fp16(blocks, 0), None)
    if weight.qtype == Q.Q5_0:  # d, 32 fifth bits (bit j is code j's), 16 bytes of nibbles; codes are 0..31 - 16
        high = (blocks[..., 2:6].copy().view(np.uint32) >> np.arange(32, dtype=np.uint32)) & 1
        signed = (_nibbles(blocks[..., 6:]) | (high.astype(np.uint8) << 4)).astype(np.int8) - np.int8(16)
        return Codes(signed.reshape(n, k), _fp16(blocks, 0), None)
    if weight.qtype == Q.Q8_0:
        return Codes(np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(n, k), _fp16(blocks, 0), None)
    if weight.qtype == Q.Q4_K:  # d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles
        low = _bits(blocks[..., 16:].reshape(n, -1, 4, 32), [0, 4], 0x0F)
        return Codes(low.reshape(n, k), *_k_quant_scales(blocks))
    if weight.qtype == Q.Q5_K:  # as Q4_K, with each code's fifth bit in 32 bytes before the nibbles
        low = _bits(blocks[..., 48:].reshape(n, -1, 4, 32), [0, 4], 0x0F)
        high = _bits(blocks[..., 16:48].reshape(n, -1, 1, 32), list(range(8)), 0x01)
        return Codes((low | high << 4).astype(np.int8).reshape(n, k), *_k_quant_scales(blocks))
    if weight.qtype == Q.Q6_K:  # 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales (one per 16 k's), d
        low = _bits(blocks[..., :128].reshape(n, -1, 2, 64), [0, 4], 0x0F).reshape(n, -1, 8, 32)
        high = _bits(blocks[..., 128:192].reshape(n, -1, 2, 32), [0, 2, 4, 6], 0x03)
        signed = (low | high << 4).astype(np.int8) - np.int8(32)
        scales = _fp16(blocks, 208)[..., None] * np.ascontiguousarray(blocks[..., 192:208]).view(np.int8).astype(np.float32)
        return Codes(signed.reshape(n, k), scales.reshape(n, -1), None, group=16)
    raise ValueError(f"no native kernel for {weight.qtype.name}")


def block_size(qtype: Q) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def _common(pieces: list[Codes]) -> list[Codes]:
    """Parts of one fused linear in one layout: the finest group; 8-bit codes unless all are 4-bit with offsets;
    zero offsets for parts without when others have them (scale * code + 0 is scale * code)."""
    group = min(p.group for p in pieces)
    pieces = [p.regrouped(group) for p in pieces]
    if len({p.four_bit for p in pieces}) == 1 and len({p.offsets is None for p in pieces}) == 1:
        return pieces
    return [Codes(p.codes.astype(np.int8), p.scales, np.zeros_like(p.scales) if p.offsets is None else p.offsets, group)
            for p in pieces]


def _panels(a: np.ndarray, rows: int) -> np.ndarray:
    """[N, C] -> [N/16, C, 16], zero-padding N to whole panels."""
    a = np.pad(a, ((0, rows - a.shape[0]), (0, 0)))
    return np.ascontiguousarray(a.reshape(rows // PANEL, PANEL, -1).transpose(0, 2, 1))


@dataclass(slots=True)
class Panels:
    """A linear's weights as the kernel reads them, rows = out_features rounded up to whole panels of 16:
    codes [rows/16, K, 16] uint8 (4-bit formats: [rows/16, K, 8], two codes a byte), scales and offsets
    [rows/16, K/group, 16] float32 (offsets of size 0 for formats without)."""
    codes: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray
    out_features: int
    in_features: int


def pack_panels(parts: list[QuantizedWeight]) -> Panels:
    """The file's blocks of `parts` (stacked along out_features) repacked into panels, in one layout whatever their
    formats."""
    pieces = _common([codes_of(p) for p in parts])
    codes = np.concatenate([p.codes for p in pieces])
    out_features, in_features = codes.shape
    rows = -(-out_features // PANEL) * PANEL
    panel_codes = _panels(codes, rows)
    if pieces[0].four_bit:
        panel_codes = panel_codes[..., : PANEL // 2] | (panel_codes[..., PANEL // 2 :] << 4)
    if pieces[0].offsets is not None:
        offsets = _panels(np.concatenate([p.offsets for p in pieces]), rows)
    else:
        offsets = np.empty(0, np.float32)
    return Panels(np.ascontiguousarray(panel_codes).view(np.uint8), _panels(np.concatenate([p.scales for p in pieces]), rows),
                  offsets, out_features, in_features)


class BlockQuantLinear(nn.Module):
    def __init__(self, parts: list[QuantizedWeight], bias: Tensor | None, kernel: ModuleType,
                 panels: Panels | None = None) -> None:
        """`parts` are stacked along out_features (fused q/k/v or gate/up), in one layout whatever their formats;
        `panels`: those parts already packed (`pack_panels`, or read from the panel cache), else packed here."""
        super().__init__()
        panels = pack_panels(parts) if panels is None else panels
        self.out_features, self.in_features = panels.out_features, panels.in_features
        self.register_buffer("codes", torch.from_numpy(panels.codes), persistent=False)
        self.register_buffer("scales", torch.from_numpy(panels.scales), persistent=False)
        self.register_buffer("offsets", torch.from_numpy(panels.offsets), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous(), persistent=False)
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        out = self.kernel.block_quant_linear(rows, self.codes, self.scales, self.offsets, self.bias, self.out_features)
        return out.reshape(*x.shape[:-1], self.out_features)


def native_parts(quantized: dict[str, QuantizedWeight], names: list[str]) -> list[QuantizedWeight] | None:
    """The stored blocks of `names` when all of them can run on the native kernel together, else None."""
    parts = [quantized.get(name) for name in names]
    if any(p is None or p.qtype not in NATIVE_QUANTS or p.shape[1] % block_size(p.qtype) for p in parts):
        return None
    return parts if len({p.shape[1] for p in parts}) == 1 else None


def use_block_quant_linears(model: nn.Module, quantized: dict[str, QuantizedWeight], kernel: ModuleType,
                            weights: Mapping[str, Tensor], source: Path | None = None) -> tuple[int, str]:
    """Swap every linear of `model` whose stored weights the kernel can use and which runs faster on it than on
    oneDNN's packed fp32 (linear_choice.py: one kind per shape, timed once per machine); returns how many were
    swapped, and how the panel cache went. Runs before the fp32 weights are loaded: a native linear's weight is never dequantized (its bias is read
    from `weights`); one timed against oneDNN keeps the oneDNN module built for the timing when that wins. The
    others stay nn.Linear, for the engine to load and pack for oneDNN. With `source` (the GGUF file the blocks are
    from), the panels come from and go to the panel cache (panel_cache.py)."""
    from lamina.engine.models.panel_cache import PanelCache

    how = policy() if packing_available() else "native"
    if how == "onednn":
        return 0, ""
    table = ChoiceTable(kernel) if how == "measure" else None
    cache = None if source is None else PanelCache(source, kernel.__name__)
    swapped = 0
    for parent, attr, names in model.linear_sources():
        parts = native_parts(quantized, names)
        if parts is None:
            continue
        linear = getattr(parent, attr)
        bias = None if linear.bias is None else torch.cat([weights[n.removesuffix("weight") + "bias"] for n in names])
        panels = None if cache is None else cache.get(names, parts)
        if panels is None:
            panels = pack_panels(parts)
            if cache is not None:
                cache.put(names, parts, panels)
        native = BlockQuantLinear(parts, bias, kernel, panels)
        timed: list[nn.Module] = []

        def onednn(linear: nn.Linear = linear, names: list[str] = names, timed: list[nn.Module] = timed) -> nn.Module:
            load_linear(linear, names, weights)
            timed.append(PackedLinear(linear))
            return timed[0]

        if table is None or table.native_is_faster(parts, native, onednn):
            setattr(parent, attr, native)
            swapped += 1
        elif timed:
            setattr(parent, attr, timed[0])
    if table is not None:
        table.save()
    if cache is not None:
        cache.save()
    return swapped, "" if cache is None else f"panels: {cache.note}"

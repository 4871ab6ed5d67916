"""The opt-in "fast" arithmetic of the AVX-512 block-quantized GEMM (kernels/qgemm_fast512.h): scale and offset
applied once per group to sum(x * code) and sum(x). Within the fp32 tolerance of the dequantized reference for
every format and 1..8 rows (and the many-row path), batch-invariant (a row alone equals that row anywhere in a
batch), one-hot rows still pick out each weight bitwise, and the mode is chosen and refused cleanly."""
from __future__ import annotations

import pytest
import torch

from lamina.engine import kernels as kernel_builds
from lamina.engine.models.block_quant import BlockQuantLinear
from tests.test_native_kernels import K_QUANTS, QTYPES, quantized, variant, width_for


@pytest.fixture
def fast():
    module = variant("avx512")
    before = module.qgemm_mode()
    module.set_qgemm_mode("fast")
    yield module
    module.set_qgemm_mode(before)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 13])
def test_fast_matches_the_reference_and_rows_are_batch_invariant(fast, qtype, rows):
    k = 256 if qtype in K_QUANTS else 128
    weight, reference = quantized(qtype, (72, k), seed=rows)  # 4.5 panels: two-panel units, a single and a partial panel
    bias = torch.randn(72)
    linear = BlockQuantLinear([weight], bias, fast)
    x = torch.randn(rows, k)
    out = linear(x)
    expected = (x.double() @ reference.double().T + bias.double()).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    for row in range(rows):
        alone = linear(x[row : row + 1])[0]
        assert torch.equal(alone, out[row]), f"row {row} changed with its batch mates"
        shuffled = torch.cat([x[row:], x[:row], x[row : row + 1].repeat(5, 1)])  # at other places, in a larger batch
        mixed = linear(shuffled)
        assert torch.equal(mixed[0], alone) and all(torch.equal(r, alone) for r in mixed[rows:]), f"row {row}"


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_fast_one_hot_rows_pick_out_each_weight_exactly(fast, qtype):
    k = width_for(qtype)
    weight, reference = quantized(qtype, (40, k))
    assert torch.equal(BlockQuantLinear([weight], None, fast)(torch.eye(k)).T, reference)


def test_fast_is_not_the_default_and_exact_stays_bitwise(monkeypatch):
    monkeypatch.delenv("LAMINA_QGEMM", raising=False)
    assert kernel_builds.qgemm_mode_for("avx512") == "exact"
    monkeypatch.setenv("LAMINA_QGEMM", "fast")
    assert kernel_builds.qgemm_mode_for("avx512") == "fast"
    assert kernel_builds.qgemm_mode_for("avx2") == "exact"  # the avx2 variant has no fast path
    monkeypatch.setenv("LAMINA_QGEMM", "quick")
    with pytest.raises(ValueError, match="LAMINA_QGEMM='quick'"):
        kernel_builds.qgemm_mode_for("avx512")


def test_modes_are_refused_where_they_do_not_exist():
    avx512 = variant("avx512")
    with pytest.raises(RuntimeError, match="qgemm mode: 'exact' or 'fast', not 'quick'"):
        avx512.set_qgemm_mode("quick")
    avx2 = variant("avx2")
    with pytest.raises(RuntimeError, match="needs the avx512 kernels"):
        avx2.set_qgemm_mode("fast")
    assert avx2.qgemm_mode() == "exact"

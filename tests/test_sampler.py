"""The sampler's filters, row by row: the nucleus found from a partial sort equals the one from a full sort."""
from __future__ import annotations

import pytest
import torch

from lamina.engine.sampler import TOP_P_CANDIDATES, _top_p


def full_sort_nucleus(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    values, order = logits.softmax(-1).sort(dim=-1, descending=True)
    drop = (values.cumsum(-1) - values) >= top_ps.unsqueeze(1)
    return torch.zeros_like(drop).scatter(1, order, drop)


@pytest.mark.parametrize("scale", [0.05, 1.0, 5.0, 30.0])
def test_top_p_equals_full_sort_and_is_row_independent(scale):
    torch.manual_seed(0)
    logits = torch.randn(8, 4 * TOP_P_CANDIDATES) * scale
    top_ps = torch.tensor([0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 0.3, 0.7])
    got = _top_p(logits, top_ps)
    assert torch.equal(torch.isinf(got), full_sort_nucleus(logits, top_ps))
    kept = (~torch.isinf(got)).sum(-1)
    assert bool((kept >= 1).all())
    if scale == 0.05:  # flat rows need more than the candidates: the full-sort fallback ran
        assert int(kept.max()) > TOP_P_CANDIDATES
    for row in range(len(logits)):
        assert torch.equal(_top_p(logits[row : row + 1], top_ps[row : row + 1]), got[row : row + 1])
    assert torch.equal(got[~torch.isinf(got)], logits[~torch.isinf(got)])

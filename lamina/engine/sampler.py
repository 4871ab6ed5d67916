"""Turn a batch of logits into next tokens, one row per sequence, each row with its own parameters and generator.

Randomness comes only from each sequence's own torch.Generator, so a seeded sample does not depend on which other
requests share the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from lamina.engine.sequence import Sequence
from lamina.engine.structured_outputs import mask_logits


TOP_P_CANDIDATES = 256


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None = None  # logprob of each chosen token under the model's distribution
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None

    def extend(self, other: "SampleResult") -> None:
        """Append other's rows (rows of a side without logprobs get placeholders: their sequences asked for none)."""
        mine, theirs = len(self.token_ids), len(other.token_ids)
        self.token_ids += other.token_ids
        if self.logprobs is not None or other.logprobs is not None:
            self.logprobs = (self.logprobs or [0.0] * mine) + (other.logprobs or [0.0] * theirs)
        if self.top_ids is not None or other.top_ids is not None:
            self.top_ids = (self.top_ids or [[]] * mine) + (other.top_ids or [[]] * theirs)
            self.top_logprobs = (self.top_logprobs or [[]] * mine) + (other.top_logprobs or [[]] * theirs)


def apply_repetition_penalty(logits: Tensor, seqs: list[Sequence]) -> Tensor:
    for row, seq in enumerate(seqs):
        penalty = seq.params.repetition_penalty
        if penalty != 1.0:
            ids = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
            scores = logits[row, ids]
            logits[row, ids] = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits


def _filter(logits: Tensor, seqs: list[Sequence]) -> Tensor:
    """Temperature, top-k, top-p and min-p, applied row-wise; returns filtered logits (masked to -inf)."""
    temps = torch.tensor([max(s.params.temperature, 1e-5) for s in seqs], dtype=logits.dtype).unsqueeze(1)
    logits = logits / temps
    top_ks = [s.params.top_k for s in seqs]
    if any(k > 0 for k in top_ks):
        vocab = logits.shape[-1]
        ks = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_ks])
        kth = logits.topk(int(ks.max()), dim=-1).values.gather(1, (ks - 1).unsqueeze(1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_ps = torch.tensor([s.params.top_p for s in seqs], dtype=logits.dtype)
    rows = (top_ps < 1).nonzero().squeeze(1)
    if len(rows) == len(logits):
        logits = _top_p(logits, top_ps)
    elif len(rows):
        logits[rows] = _top_p(logits[rows], top_ps[rows])
    min_ps = torch.tensor([s.params.min_p for s in seqs], dtype=logits.dtype)
    if bool((min_ps > 0).any()):
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_ps.unsqueeze(1) * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def _top_p(logits: Tensor, top_ps: Tensor) -> Tensor:
    """Keep each row's smallest set of most likely tokens whose mass reaches its top_p (nucleus).

    The nucleus is looked for among the row's TOP_P_CANDIDATES most likely tokens first (a partial sort); only a
    row whose candidates hold less than top_p of the mass is sorted in full. Either way the result of a row
    depends on that row alone.
    """
    probs = logits.softmax(-1)
    values, order = probs.topk(min(TOP_P_CANDIDATES, logits.shape[-1]), dim=-1)
    dropped = _outside_nucleus(probs, values, order, top_ps)
    wide = (values.sum(-1) < top_ps).nonzero().squeeze(1)
    if len(wide):
        values, order = probs[wide].sort(dim=-1, descending=True)
        dropped[wide] = _outside_nucleus(probs[wide], values, order, top_ps[wide])
    return logits.masked_fill(dropped, float("-inf"))


def _outside_nucleus(probs: Tensor, values: Tensor, order: Tensor, top_ps: Tensor) -> Tensor:
    """values/order: each row's probabilities in descending order (all, or a leading part that holds top_p)."""
    cum = values.cumsum(-1)
    keep = (cum - values) < top_ps.unsqueeze(1)
    return torch.ones_like(probs, dtype=torch.bool).scatter_(1, order, ~keep)


def _inverse_cdf(probs: Tensor, draws: Tensor) -> Tensor:
    """Per row, the first token whose cumulative mass exceeds the row's uniform draw (from its own generator)."""
    cdf = probs.cumsum(-1)
    targets = (draws * cdf[:, -1]).to(cdf.dtype).unsqueeze(1)
    return torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _uniforms(seqs: list[Sequence]) -> Tensor:
    return torch.cat([torch.rand(1, generator=s.generator, dtype=torch.float64) for s in seqs])


def uniform(seq: Sequence) -> float:
    """The next uniform draw in [0, 1) of seq's own random stream."""
    return float(torch.rand(1, generator=seq.generator, dtype=torch.float64))


def filtered_probs(logits: Tensor, seqs: list[Sequence]) -> Tensor:
    """logits [B, vocab] -> the distributions sampling draws from (temperature, top-k, top-p, min-p per row)."""
    return _filter(logits, seqs).softmax(-1)


def draw(probs: Tensor, u: float) -> int:
    """The token of probs [vocab] (not necessarily normalised) at uniform draw u, by inverse CDF."""
    return int(_inverse_cdf(probs.unsqueeze(0), torch.tensor([u], dtype=torch.float64)))


def _draw(logits: Tensor, seqs: list[Sequence], kernels: ModuleType | None) -> Tensor:
    """A sampled token per row, each row filtered by its own parameters and drawn from its own generator."""
    if kernels is not None:
        params = [s.params for s in seqs]
        return kernels.sample_rows(logits.contiguous(), torch.tensor([p.temperature for p in params], dtype=torch.float32),
                                   torch.tensor([p.top_k for p in params], dtype=torch.long),
                                   torch.tensor([p.top_p for p in params], dtype=torch.float32),
                                   torch.tensor([p.min_p for p in params], dtype=torch.float32), _uniforms(seqs))
    return _inverse_cdf(_filter(logits, seqs).softmax(-1), _uniforms(seqs))


def sample(logits: Tensor, seqs: list[Sequence], kernels: ModuleType | None = None) -> SampleResult:
    """logits [B, vocab] (float32), one row per sequence in `seqs`; `kernels`: the native sampler, if in use."""
    logits = apply_repetition_penalty(logits.float(), seqs)
    scored, logits = logits, mask_logits(logits, seqs)  # logprobs stay the model's; the draw obeys the grammars
    rows = [row for row, seq in enumerate(seqs) if not seq.params.greedy]
    if len(rows) == len(seqs):
        chosen = _draw(logits, seqs, kernels)
    else:
        chosen = logits.argmax(-1)
        if rows:
            index = torch.tensor(rows)
            chosen[index] = _draw(logits[index], [seqs[r] for r in rows], kernels)
    return with_logprobs(SampleResult(chosen.tolist()), scored, chosen, seqs)


def with_logprobs(result: SampleResult, scored: Tensor, chosen: Tensor, seqs: list[Sequence]) -> SampleResult:
    """Fill result's logprobs (and top alternatives) when some row's sequence asked for them; scored [B, vocab] are
    the logits they are read from, chosen [B] the tokens."""
    want = [s.params.logprobs for s in seqs]
    if any(w is not None for w in want):
        logprobs = torch.log_softmax(scored, dim=-1)
        result.logprobs = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
        k = max(w or 0 for w in want)
        if k:
            top = logprobs.topk(k, dim=-1)
            result.top_ids, result.top_logprobs = top.indices.tolist(), top.values.tolist()
    return result

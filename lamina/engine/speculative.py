"""Speculative decoding without a draft model: prompt lookup (vLLM's n-gram speculator).

A sequence with `SamplingParams.num_speculative_tokens = k > 0` proposes, at each decode step, up to k draft tokens:
the tokens that followed the most recent earlier occurrence of its last n tokens (n from `prompt_lookup_max` down to
`prompt_lookup_min`) in its prompt and output. Its last token and the drafts run as 1 + d decode rows of one forward
(row i attends to the first L + i tokens, so each row is computed exactly as a plain decode step would compute it),
and `verify` keeps the drafts the model agrees with:

- greedy: draft i is kept while it is the argmax of row i - 1; the first disagreement's argmax (or, when every
  draft is kept, the last row's) is the next token. The output is the plain greedy output, token for token.
- sampled: standard speculative rejection sampling (Leviathan et al. 2023, Chen et al. 2023) with a point-mass
  draft: draft d is kept with probability p(d), p the row's filtered distribution (temperature, top-k, top-p,
  min-p); else the token is drawn from p with d removed, renormalised. The output has plain sampling's distribution.
  Every uniform comes from the sequence's own generator, and the drafts depend on its tokens alone (a step too full
  for them defers the sequence rather than cutting them), so a seeded sample stays independent of its batch mates.

The KV slots of rejected drafts are given back after the step (`BlockManager.trim`). Speculation is off for
sequences with a grammar (structured_outputs) or a repetition_penalty, whose rows would need the drafts' effect on
the mask or the penalty.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lamina.engine.sampler import SampleResult, draw, filtered_probs, uniform, with_logprobs
from lamina.engine.sequence import Sequence


class NgramIndex:
    """Per sequence: n-gram -> end position of its latest occurrence that has a following token (built lazily)."""

    __slots__ = ("min_n", "max_n", "latest", "indexed")

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.latest: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # n-grams ending before this position are indexed

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix n-gram."""
        for end in range(self.indexed, len(tokens) - 1):
            for n in range(self.min_n, min(self.max_n, end + 1) + 1):
                self.latest[tuple(tokens[end - n + 1 : end + 1])] = end
        self.indexed = max(self.indexed, len(tokens) - 1)
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            end = self.latest.get(tuple(tokens[-n:]))
            if end is not None:
                return tokens[end + 1 : end + 1 + k]
        return []


def speculates(seq: Sequence) -> bool:
    params = seq.params
    return (params.num_speculative_tokens > 0 and seq.matcher is None and params.repetition_penalty == 1.0
            and not seq.fork_pending and not seq.prefill_only)


def propose(seq: Sequence, max_seq_len: int, max_drafts: int) -> list[int]:
    """seq's drafts for its next decode step (a function of its tokens and parameters only); [] when it does not
    speculate. At most `max_drafts`, and never past max_tokens or `max_seq_len` tokens."""
    if not speculates(seq):
        return []
    params = seq.params
    k = min(params.num_speculative_tokens, max_drafts, params.max_tokens - seq.num_output_tokens - 1,
            max_seq_len - len(seq.token_ids) - 1)
    if k <= 0:
        return []
    if seq.ngrams is None:
        seq.ngrams = NgramIndex(params.prompt_lookup_min, params.prompt_lookup_max)
    return seq.ngrams.propose(seq.token_ids, k)


def verify(logits: Tensor, seq: Sequence, drafts: list[int]) -> list[int]:
    """logits [1 + len(drafts), vocab] (fp32): row i predicts the token after drafts[:i]. Returns the tokens to append:
    the kept drafts, then one token from the first row that rejected its draft (or from the last row)."""
    if seq.params.greedy:
        best = logits.argmax(-1).tolist()
        kept = next((i for i, d in enumerate(drafts) if best[i] != d), len(drafts))
        return best[: kept + 1]
    probs = filtered_probs(logits, [seq] * len(logits))
    tokens: list[int] = []
    for i, d in enumerate(drafts):
        if uniform(seq) < float(probs[i, d]):
            tokens.append(d)
            continue
        residual = probs[i].clone()
        residual[d] = 0.0
        return tokens + [draw(residual, uniform(seq))]
    return tokens + [draw(probs[len(drafts)], uniform(seq))]


def verify_all(logits: Tensor, speculating: list[tuple[Sequence, list[int], int]]
               ) -> tuple[list[Sequence], SampleResult]:
    """Verify each (seq, drafts, its first row in logits) of `speculating`. Returns one row per emitted token, a
    sequence's tokens in order: the sequences and their SampleResult (logprobs read from each token's own row). Counts
    the proposed and accepted drafts on each sequence."""
    seqs: list[Sequence] = []
    rows: list[int] = []
    tokens: list[int] = []
    for seq, drafts, first in speculating:
        emitted = verify(logits[first : first + 1 + len(drafts)], seq, drafts)
        seq.num_draft_tokens += len(drafts)
        seq.num_accepted_tokens += len(emitted) - 1
        seqs += [seq] * len(emitted)
        rows += range(first, first + len(emitted))
        tokens += emitted
    return seqs, with_logprobs(SampleResult(tokens), logits[torch.tensor(rows)], torch.tensor(tokens), seqs)

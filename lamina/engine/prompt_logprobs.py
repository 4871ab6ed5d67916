"""Prompt logprobs (SamplingParams.prompt_logprobs): each prompt token's logprob given the tokens before it.

The logits at prompt position p score token p + 1, so a prefill chunk covering positions [begin, end) scores tokens
begin + 1 .. end; chunks of one prompt are collected in order (a recomputed chunk after a preemption is skipped).
Only requests that ask pay for the full-vocabulary log_softmax over their prompt rows.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lamina.engine.outputs import TokenLogprob
from lamina.engine.sequence import Sequence

if TYPE_CHECKING:
    from lamina.engine.request import Request


@dataclass(slots=True)
class PromptScores:
    """Logprobs of `seq`'s prompt tokens first .. first + len(token_ids) - 1, and each position's top-k."""

    seq: Sequence
    first: int  # index, in the prompt, of the first token scored
    token_ids: list[int]
    logprobs: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


def prompt_logprobs_slots(request: "Request", index: int) -> list[TokenLogprob | None] | None:
    """A new sequence's `prompt_logprobs`: one slot per prompt token if its request asks (sample 0 only: the prompt
    is scored once per request, samples 1.. fork after it), else None."""
    if request.params.prompt_logprobs is None or index != 0:
        return None
    return [None] * len(request.prompt_token_ids)


def rows_to_score(seq: Sequence, begin: int, chunk: int) -> range:
    """The positions of a prefill chunk [begin, begin + chunk) whose logits score a prompt token not yet scored."""
    if seq.prompt_logprobs is None:
        return range(0)
    return range(max(begin, seq.num_prompt_logprobs), min(begin + chunk, seq.num_prompt_tokens - 1))


def score(seq: Sequence, positions: range, hidden: Tensor, compute_logits: Callable[[Tensor], Tensor]) -> PromptScores:
    """`hidden` [len(positions), hidden]: the model's last hidden states at `positions` of seq."""
    logprobs = torch.log_softmax(compute_logits(hidden).float(), dim=-1)
    targets = seq.token_ids[positions.start + 1 : positions.stop + 1]
    chosen = logprobs.gather(1, torch.tensor(targets).unsqueeze(1)).squeeze(1).tolist()
    k = seq.params.prompt_logprobs or 0
    top_ids: list[list[int]] = [[] for _ in targets]
    top_values: list[list[float]] = [[] for _ in targets]
    if k:
        top = logprobs.topk(k, dim=-1)
        top_ids, top_values = top.indices.tolist(), top.values.tolist()
    return PromptScores(seq, positions.start + 1, targets, chosen, top_ids, top_values)


def record(scores: list[PromptScores], id_to_token: Callable[[int], str]) -> None:
    """Store each PromptScores into its sequence's `prompt_logprobs` (one TokenLogprob per prompt token)."""
    for s in scores:
        assert s.seq.prompt_logprobs is not None
        for i, token in enumerate(s.token_ids):
            s.seq.prompt_logprobs[s.first + i] = TokenLogprob(token, id_to_token(token), s.logprobs[i],
                                                              dict(zip(s.top_ids[i], s.top_logprobs[i])))
        s.seq.num_prompt_logprobs = s.first + len(s.token_ids) - 1

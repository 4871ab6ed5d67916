"""A Sequence is one sample being generated: its tokens, its KV blocks and its sampling state."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lamina.engine.outputs import TokenLogprob
from lamina.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from lamina.engine.tokenizer import Detokenizer


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_seq_ids = itertools.count()


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    index: int  # sample index within its request
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    generator: torch.Generator
    seed: int = 0
    detokenizer: "Detokenizer | None" = None
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache on first admission
    block_table: list[int] = field(default_factory=list)
    arrival: int = 0  # admission order, for FCFS and choosing preemption victims
    fork_pending: bool = False  # a request with n > 1 forks once its prompt is prefilled
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # by prompt position (the first has none), if asked
    num_prompt_logprobs: int = 0  # prompt positions whose logits have been scored (see engine/prompt_logprobs.py)
    text: str = ""  # the output text so far (cut at a stop string once one is found)
    num_emitted_tokens: int = 0  # DELTA outputs: output tokens already reported
    num_emitted_chars: int = 0  # DELTA outputs: characters of text already reported
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    parks: bool = False  # a branch (see branches.py): finishing keeps its blocks, parked until released or dropped
    prefill_only: bool = False  # a branch being opened: its prompt is prefilled, nothing is sampled
    matcher: Any = None  # SamplingParams.structured_outputs: this sample's llguidance.LLMatcher, advanced per token
    ngrams: Any = None  # SamplingParams.num_speculative_tokens: its speculative.NgramIndex, built on first use
    num_draft_tokens: int = 0  # draft tokens proposed for it (speculative decoding)
    num_accepted_tokens: int = 0  # ... and accepted

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

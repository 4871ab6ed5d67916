"""A Request: one prompt and its SamplingParams, validated before it reaches the engine, and its samples' sequences."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lamina.engine.outputs import OutputKind
from lamina.engine.sampling_params import SamplingParams
from lamina.engine.sequence import Sequence
from lamina.engine.structured_outputs import Grammar, StructuredOutputsParams
from lamina.engine.tokenizer import Tokenizer
from lamina.errors import InvalidRequestError

_GOLDEN = 0x9E3779B97F4A7C15


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    output_kind: OutputKind = OutputKind.CUMULATIVE
    seqs: list[Sequence] = field(default_factory=list)
    aborted: bool = False
    prompt_logprobs_sent: bool = False  # OutputKind.DELTA: the prompt logprobs went out with an earlier output
    grammar: Grammar | None = None  # SamplingParams.structured_outputs, compiled; each sample gets its own matcher

    def matcher(self) -> Any:
        """A new sample's grammar state (an llguidance.LLMatcher), or None when the request is unconstrained."""
        return None if self.grammar is None else self.grammar.matcher()

    @property
    def finished(self) -> bool:
        return self.aborted or (len(self.seqs) == self.params.n and all(s.is_finished for s in self.seqs))


@dataclass(slots=True, frozen=True)
class PromptLimits:
    """What a prompt must fit: the vocabulary, the context and the KV pool."""

    vocab_size: int
    max_model_len: int
    block_size: int
    num_blocks: int


def make_request(prompt: str | list[int], params: SamplingParams | None, request_id: str, tokenizer: Tokenizer,
                 limits: PromptLimits, output_kind: OutputKind = OutputKind.CUMULATIVE) -> Request:
    """Tokenize and validate (InvalidRequestError, one line); safe to call from any thread."""
    params = params or SamplingParams()
    if not isinstance(params, SamplingParams):
        raise InvalidRequestError(f"sampling params must be SamplingParams, got {type(params).__name__}")
    if not isinstance(output_kind, OutputKind):
        raise InvalidRequestError(f"output_kind must be an OutputKind, got {output_kind!r}")
    if isinstance(prompt, str):
        text, ids = prompt, tokenizer.encode_prompt(prompt)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
        text, ids = None, list(prompt)
    else:
        raise InvalidRequestError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    if not ids:
        raise InvalidRequestError("prompt is empty")
    if any(t < 0 or t >= limits.vocab_size for t in ids):
        raise InvalidRequestError(f"prompt has token ids outside the vocabulary [0, {limits.vocab_size})")
    if len(ids) >= limits.max_model_len:
        raise InvalidRequestError(
            f"prompt has {len(ids)} tokens; the model's context is {limits.max_model_len} tokens (max_model_len)"
        )
    if -(-(len(ids) + 1) // limits.block_size) > limits.num_blocks:
        raise InvalidRequestError(f"prompt of {len(ids)} tokens does not fit the KV pool of {limits.num_blocks} blocks")
    structured = StructuredOutputsParams.coerce(params.structured_outputs)
    grammar = None if structured is None else Grammar(structured, tokenizer)
    return Request(request_id, text, ids, params, output_kind, grammar=grammar)


def make_generator(seed: int, index: int) -> torch.Generator:
    """Sample `index`'s own random stream: a function of the request's seed and the index only."""
    return torch.Generator().manual_seed((seed + _GOLDEN * (index + 1)) % (2**63))

"""Structured outputs: a grammar (JSON schema, any JSON object, regex, choice) masks each step's logits.

vLLM's `StructuredOutputsParams` names. The grammar engine is llguidance: a `Grammar` is compiled once per request
(in `make_request`, so a bad schema is an InvalidRequestError before the engine sees it); each sample gets its own
`llguidance.LLMatcher`, advanced with every token the sample appends. `mask_logits` sets the logits of the tokens the
grammar forbids to -inf before the sampler filters and draws, so seeded sampling stays exact and only constrained
rows pay for the mask.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lamina.errors import InvalidRequestError

if TYPE_CHECKING:
    import llguidance

    from lamina.engine.sequence import Sequence
    from lamina.engine.tokenizer import Tokenizer

_KINDS = ("json", "regex", "choice", "json_object")


@dataclass(frozen=True, slots=True)
class StructuredOutputsParams:
    """Exactly one of: `json` (a JSON schema, dict or JSON text), `regex` (the whole output matches it), `choice`
    (the output is one of these strings), `json_object=True` (any JSON object). vLLM's names."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        given = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise InvalidRequestError(f"structured_outputs: expected exactly one of {', '.join(_KINDS)}, got "
                                      f"{', '.join(given) or 'none'}")
        if self.regex is not None and not isinstance(self.regex, str):
            raise InvalidRequestError(f"structured_outputs.regex={self.regex!r}: expected a string")
        if self.choice is not None and (not isinstance(self.choice, (list, tuple)) or not self.choice
                                        or not all(isinstance(c, str) and c for c in self.choice)):
            raise InvalidRequestError(f"structured_outputs.choice={self.choice!r}: expected a non-empty list of "
                                      "non-empty strings")
        if self.json is not None and not isinstance(self.json, (dict, str)):
            raise InvalidRequestError(f"structured_outputs.json={self.json!r:.80}: expected a JSON schema (an object)")

    @classmethod
    def coerce(cls, value: Any) -> "StructuredOutputsParams | None":
        """None, a StructuredOutputsParams, or its fields as a dict (InvalidRequestError naming an unknown one)."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise InvalidRequestError(f"structured_outputs={value!r:.80}: expected an object with one of "
                                      f"{', '.join(_KINDS)}")
        unknown = sorted(set(value) - set(_KINDS))
        if unknown:
            raise InvalidRequestError(f"structured_outputs: unknown field(s) {', '.join(unknown)}; known: "
                                      f"{', '.join(_KINDS)}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def grammar(self) -> str:
        """llguidance's grammar text; InvalidRequestError naming the field when the schema or regex is invalid."""
        import llguidance

        if self.json is not None:
            field = "json"
            schema = self.json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError as exc:
                    raise InvalidRequestError(f"structured_outputs.json: not valid JSON: {exc}") from None
            text = llguidance.LLMatcher.grammar_from_json_schema(schema)
        elif self.json_object:
            field, text = "json_object", llguidance.LLMatcher.grammar_from_json_schema({"type": "object"})
        elif self.regex is not None:
            field, text = "regex", llguidance.LLMatcher.grammar_from_regex(self.regex)
        else:
            field = "choice"
            text = llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in self.choice or []))
        message = llguidance.LLMatcher.validate_grammar(text)  # "" when valid
        if message:
            raise InvalidRequestError(f"structured_outputs.{field}: invalid: {message.strip()}")
        return text


class Grammar:
    """A compiled grammar for one request: `matcher()` gives each sample its own state."""

    __slots__ = ("tokenizer", "text", "vocab_size")

    def __init__(self, params: StructuredOutputsParams, tokenizer: "Tokenizer") -> None:
        self.tokenizer = guidance_tokenizer(tokenizer)
        self.text = params.grammar()
        self.vocab_size = tokenizer.vocab_size

    def matcher(self) -> "llguidance.LLMatcher":
        import llguidance

        matcher = llguidance.LLMatcher(self.tokenizer, self.text)
        if matcher.is_error():
            raise InvalidRequestError(f"structured_outputs: invalid grammar: {matcher.get_error()}")
        return matcher


def guidance_tokenizer(tokenizer: "Tokenizer") -> "llguidance.LLTokenizer":
    """llguidance's view of the engine's tokenizer (built once per tokenizer: about a second)."""
    return _guidance_tokenizer(tokenizer)


@lru_cache(maxsize=8)
def _guidance_tokenizer(tokenizer: "Tokenizer") -> "llguidance.LLTokenizer":
    import llguidance

    eos = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
    return llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=tokenizer.vocab_size, eos_token=eos)


def mask_logits(logits: Tensor, seqs: list["Sequence"]) -> Tensor:
    """logits [B, vocab]; a copy in which each constrained row (a sequence with a matcher) has -inf where its grammar
    forbids the token; unconstrained rows are unchanged. Returns `logits` itself when no row is constrained."""
    rows = [row for row, seq in enumerate(seqs) if seq.matcher is not None]
    if not rows:
        return logits
    logits = logits.clone()
    vocab = logits.shape[-1]
    for row in rows:
        bits = np.unpackbits(np.frombuffer(seqs[row].matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.zeros(vocab, dtype=torch.bool)
        width = min(vocab, len(bits))
        allowed[:width] = torch.from_numpy(bits[:width].astype(bool))
        logits[row].masked_fill_(~allowed, float("-inf"))
    return logits

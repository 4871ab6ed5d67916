"""Results of generation, shaped like vLLM's offline API, and what each engine step reports (OutputKind)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class OutputKind(enum.Enum):
    """What the engine reports for a request at each step (vLLM's RequestOutputKind).

    CUMULATIVE: every sample's text, token ids and logprobs so far. DELTA: only what samples added in this step (new
    token ids and their logprobs, newly released text, the finish reason once), and only the samples that changed;
    the deltas of a sample concatenate to its final CompletionOutput. FINAL_ONLY: nothing until the request has
    finished, then the cumulative output.
    """

    CUMULATIVE = "cumulative"
    DELTA = "delta"
    FINAL_ONLY = "final_only"


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float  # the server's echoed first prompt token has None (nothing precedes it), as OpenAI's wire does
    top: dict[int, float] = field(default_factory=dict)  # top-k alternatives: token id -> logprob


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: str | int | None = None  # the stop string or token id that ended it

    @property
    def cumulative_logprob(self) -> float | None:
        return None if self.logprobs is None else sum(lp.logprob for lp in self.logprobs)


@dataclass(slots=True)
class RequestOutput:
    """One request's outputs; with OutputKind.DELTA, `outputs` holds only this step's additions (see OutputKind)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # SamplingParams.prompt_logprobs: one entry per prompt token, the first None (nothing precedes it); else None.
    # With OutputKind.DELTA, only the request's first output carries them.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # Speculative decoding (SamplingParams.num_speculative_tokens), over all samples so far: draft tokens proposed,
    # and those accepted (each accepted draft is a token gained without a forward of its own).
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


class DeltaJoiner:
    """Joins DELTA CompletionOutputs, by index, into cumulative ones (what a CUMULATIVE request would end with)."""

    __slots__ = ("_texts", "_joined")

    def __init__(self) -> None:
        self._texts: dict[int, list[str]] = {}
        self._joined: dict[int, CompletionOutput] = {}

    def add(self, delta: CompletionOutput, index: int | None = None) -> None:
        """Append `delta` to choice `index` (default: delta.index)."""
        index = delta.index if index is None else index
        joined = self._joined.get(index)
        if joined is None:
            self._texts[index] = [delta.text]
            logprobs = None if delta.logprobs is None else list(delta.logprobs)
            self._joined[index] = CompletionOutput(index, "", list(delta.token_ids), logprobs, delta.finish_reason,
                                                   delta.stop_reason)
            return
        self._texts[index].append(delta.text)
        joined.token_ids += delta.token_ids
        if delta.logprobs is not None:
            if joined.logprobs is None:
                joined.logprobs = []
            joined.logprobs += delta.logprobs
        if delta.finish_reason is not None:
            joined.finish_reason, joined.stop_reason = delta.finish_reason, delta.stop_reason

    @property
    def num_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self._joined.values())

    def outputs(self) -> list[CompletionOutput]:
        """The joined choices, by index."""
        result = []
        for index in sorted(self._joined):
            joined = self._joined[index]
            joined.text = "".join(self._texts[index])
            result.append(joined)
        return result

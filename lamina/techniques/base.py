"""What flows between layers (State, Candidate) and the base class of every technique."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lamina.backends.base import Completion
from lamina.budget import Estimate
from lamina.rewards.confidence import mean_entropy, mean_logprob, self_certainty
from lamina.techniques.spec_base import Component

if TYPE_CHECKING:
    from lamina.calls import Caller


@dataclass(slots=True)
class Candidate:
    """One response flowing between layers, and what techniques learnt of it."""

    text: str
    source: str  # the display name of the component that wrote it
    model: str | None = None  # the model alias that wrote it
    score: float | None = None  # reward/rank judge: 1-10 rating, or P(yes) in [0, 1] by verdict logprob
    critique: str | None = None
    pass_rate: float | None = None  # unit_test: fraction of tests passed, in [0, 1]
    mean_logprob: float | None = None  # mean per-token logprob (nats), when logprobs were requested
    mean_entropy: float | None = None  # mean per-token entropy (nats), when logprobs were requested
    self_certainty: float | None = None  # mean KL(uniform || p) per token, nats >= 0 (top-k logprobs)
    answer: str | None = None  # vote: the extracted answer
    token_ids: list[int] | None = None  # the sampled tokens, where the backend returns them
    finish_reason: str | None = None  # "stop" | "length" | ...
    executed: bool = False  # program: text/answer are what the program printed; token_ids are the PROGRAM's tokens

    @classmethod
    def sampled(cls, completion: Completion, source: str, model: str | None) -> "Candidate":
        """A fresh sample from a model, with what its logprobs (if any) tell."""
        lps = completion.logprobs
        return cls(completion.text, source, model, mean_logprob=mean_logprob(lps), mean_entropy=mean_entropy(lps),
                   self_certainty=self_certainty(lps), token_ids=completion.token_ids,
                   finish_reason=completion.finish_reason)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @property
    def printed_nothing(self) -> bool:
        """An executed program that answered nothing (raised, timed out, printed nothing): nothing to score or vote."""
        return self.executed and self.answer is None

    def content(self) -> dict[str, Any]:
        """What the candidate says and what is known of it, without where it came from (component, alias)."""
        return {name: getattr(self, name) for name in self.__slots__ if name not in ("source", "model")}


@dataclass(slots=True)
class State:
    messages: list[dict[str, str]]
    calls: "Caller"
    candidates: list[Candidate] = field(default_factory=list)
    tests: list[str] | None = None

    @property
    def query(self) -> str:
        users = [m.get("content", "") for m in self.messages if m.get("role") == "user"]
        return str(users[-1] if users else self.messages[-1].get("content", ""))

    @property
    def critiques(self) -> list[str | None]:
        return [c.critique for c in self.candidates]

    @property
    def scores(self) -> list[float | None]:
        return [c.score for c in self.candidates]

    @property
    def trace(self) -> list[dict[str, Any]]:
        return self.calls.trace


class Technique:
    """One component of a layer: `run(state)` returns the candidates it produces, or None to pass them through."""

    kind: ClassVar[str] = ""  # the spec's `type`
    spec_class: ClassVar[type[Component]] = Component  # the pydantic spec this technique is built from
    builtin: ClassVar[dict[str, Any]] = {"temperature": 0.0, "max_tokens": 64}
    judge: ClassVar[bool] = True  # its built-in settings win over the alias's params (see Caller.params)
    reads_candidates: ClassVar[bool] = True  # False: its calls depend on the query only (seeds; Runner.content_key)

    def __init__(self, spec: Any, name: str) -> None:
        self.spec = spec
        self.name = name
        self.logprobs_downstream: int | None = None  # the top logprobs later layers need (set by the Runner)

    def logprobs_needed(self) -> int | None:
        """How many top logprobs per token this component needs its input candidates to carry (0: the sampled
        tokens' own; None: none). The Runner asks every earlier sampling component (generate, program) for them."""
        return None

    def logprobs_to_request(self) -> int | None:
        """A sampling component's `logprobs`: its spec's when set (the user's choice wins, even one too small for a
        later layer, which then notes its fallback), else what later layers need."""
        own = getattr(self.spec, "logprobs", None)
        return own if own is not None else self.logprobs_downstream

    async def run(self, state: State) -> list[Candidate] | None:
        raise NotImplementedError

    def estimate(self, state: State) -> Estimate:
        """An upper bound on the calls and tokens `run` may spend, checked against the budget first."""
        return Estimate()

    def params(self, state: State, alias: str | None = None, **force: Any) -> dict[str, Any]:
        """The settings of a call to `alias` (default: the component's model); `force` wins over everything."""
        return state.calls.params(alias or self.spec.model, self.builtin, {**self.spec.overrides(), **force},
                                  self.judge)

    def max_tokens(self, state: State) -> int:
        return int(self.params(state).get("max_tokens", 16))

    async def ask(self, state: State, prompt: str, call_index: int = 0, samples: int = 1, **force: Any):
        messages = [{"role": "user", "content": prompt}]
        return await state.calls.call(self.name, self.spec.model, messages, samples=samples, call_index=call_index,
                                      params=self.params(state, **force))

    def per_call_estimate(self, state: State, prompt_text: str, calls: int, samples: int = 1) -> Estimate:
        return state.calls.estimate(self.spec.model, prompt_text, self.max_tokens(state), samples, calls)

    def messages(self, state: State) -> list[dict[str, str]]:
        """The query's conversation, after the spec's `system` prompt when it has one (generators)."""
        system = getattr(self.spec, "system", None)
        return ([{"role": "system", "content": system}] if system else []) + list(state.messages)

    def note(self, state: State, **event: Any) -> None:
        state.calls.note(self.name, **event)


def numbered(candidates: list[Candidate], with_critiques: bool = False, limit: int = 1200) -> str:
    parts = []
    for i, c in enumerate(candidates, 1):
        part = f"[{i}] {c.text.strip()[:limit]}"
        if with_critiques and c.critique:
            part += f"\nCritique of [{i}]: {c.critique.strip()[:limit // 2]}"
        parts.append(part)
    return "\n\n".join(parts)

"""search: step-level search decoding as a layer (lamina.decoding): grow answers a step at a time on the model's
branches and keep the promising partial ones by a reward. Algorithms: best_of_n (`weighted: true`: weighted
best-of-N), beam, dvts, particle_filter, astar. Rewards: the generator's own `mean_logprob` or `self_certainty` (no
calls), a `judge` (the verdict probability of `judge_model`, each call through the Caller: budget, cache, trace),
`execution` (the query's tests in the sandbox; complete answers only), `verifier` (a learned verifier file on the
local model's hidden states).

Candidates out: the complete answers, the chosen one first (then by score); the compact tree goes to the trace as
one `search` event. Usage: each extension is a call (its prompt tokens cost as if uncached, with the cached ones
counted), the judge's calls are its own calls."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lamina.backends.branching import Branching
from lamina.budget import Estimate
from lamina.calls import derive_seed
from lamina.decoding import ALGORITHMS, SearchConfig, SearchResult, search
from lamina.decoding.scoring import as_response
from lamina.errors import SpecError
from lamina.rewards import TestsPassed, VerdictJudge, mean_logprob_reward, self_certainty_reward
from lamina.rewards.judge import STEP_VERDICT_PROMPT, VERDICT_LOGPROBS
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.reward import check_verifier
from lamina.techniques.spec_base import Component, StrictModel

SearchReward = Literal["mean_logprob", "self_certainty", "judge", "execution", "verifier"]
TOP_LOGPROBS = {"mean_logprob": 0, "self_certainty": VERDICT_LOGPROBS}  # what each confidence reward needs


class SearchBudget(StrictModel):
    max_tokens: int | None = Field(None, ge=1)  # generated tokens per query
    max_reward_calls: int | None = Field(None, ge=1)  # paths scored by the reward per query


class SearchSpec(Component):
    type: Literal["search"]
    algorithm: Literal[ALGORITHMS] = "beam"  # type: ignore[valid-type]
    delimiter: str = Field("\n", min_length=1)
    step_max_tokens: int = Field(64, ge=1, le=4096)
    width: int = Field(4, ge=1, le=256)
    beam_width: int = Field(2, ge=1, le=64)
    depth: int = Field(8, ge=1, le=256)
    seed: int | None = None  # None: derived from the architecture's seed and the query
    resample_temperature: float = Field(1.0, gt=0)
    weighted: bool = False
    reward: SearchReward = "mean_logprob"
    verifier: str | None = None
    judge_model: str | None = None  # reward judge: the judge's model alias (default: the component's model)
    system: str | None = None
    budget: SearchBudget = Field(default_factory=SearchBudget)

    @model_validator(mode="after")
    def _consistent(self) -> "SearchSpec":
        if self.max_tokens is not None:
            raise ValueError("max_tokens: a search's step length is step_max_tokens (and depth the steps)")
        if self.beam_width > self.width and self.algorithm in ("beam", "dvts"):
            raise ValueError(f"beam_width: {self.beam_width} exceeds width {self.width} ({self.algorithm} keeps "
                             "width / beam_width nodes)")
        if self.weighted and self.algorithm != "best_of_n":
            raise ValueError(f"weighted: applies to algorithm best_of_n only (got algorithm: {self.algorithm})")
        if self.judge_model and self.reward != "judge":
            raise ValueError(f"judge_model: is read only with reward: judge (got reward: {self.reward})")
        check_verifier("reward", self.reward, self.verifier)
        return self

    def aliases(self) -> list[str | None]:
        return [self.model] + ([self.judge_model] if self.judge_model else [])


class Search(Technique):
    kind = "search"
    spec_class = SearchSpec
    builtin = {"temperature": 0.8}
    judge = False  # a generator: the alias's params win over its built-in settings
    reads_candidates = False
    spec: SearchSpec

    def config(self, state: State) -> SearchConfig:
        s, params = self.spec, self.params(state)
        seed = s.seed if s.seed is not None else derive_seed(state.calls.base_seed, state.calls.query_key,
                                                             state.calls.keys.get(self.name, self.name))
        return SearchConfig(s.delimiter, s.step_max_tokens, s.width, s.beam_width, s.depth,
                            float(params.get("temperature", 0.8)), float(params.get("top_p", 1.0)), seed,
                            s.resample_temperature, s.weighted, TOP_LOGPROBS.get(s.reward, 0),
                            s.budget.max_tokens, s.budget.max_reward_calls)

    async def reward(self, state: State, backend):
        kind = self.spec.reward
        if kind == "mean_logprob":
            return mean_logprob_reward()
        if kind == "self_certainty":
            return self_certainty_reward()
        if kind == "execution":
            if not state.tests:
                raise SpecError(f"component {self.name!r}: reward execution needs the query's tests")
            return TestsPassed(state.tests)
        if kind == "verifier":
            from lamina.rewards.learned import load_verifier

            if not hasattr(backend, "engine"):
                raise SpecError(f"component {self.name!r}: reward verifier reads the local engine's hidden states; "
                                f"model {backend.identity} has none here")
            return load_verifier(str(self.spec.verifier)).bind((await backend.engine()).engine, backend.model)
        calls = iter(range(1 << 30))

        async def ask(prompt: str, i: int):
            params = state.calls.params(self.spec.judge_model or self.spec.model, {"temperature": 0.0},
                                        {"max_tokens": 1, "logprobs": VERDICT_LOGPROBS}, judge=True)
            return (await state.calls.call(self.name, self.spec.judge_model or self.spec.model,
                                           [{"role": "user", "content": prompt}], call_index=next(calls),
                                           params=params))[0]
        return VerdictJudge(ask)

    async def run(self, state: State) -> list[Candidate]:
        handle = state.calls.handle(self.spec.model)
        backend = handle.backend
        if not isinstance(backend, Branching):
            raise SpecError(f"component {self.name!r}: search needs a backend with branches (local or openai); "
                            f"model alias {handle.alias!r} is {backend.identity}")
        need = self.estimate(state)
        state.calls.guard.reserve(need, f"component {self.name!r}")
        result: SearchResult | None = None
        try:
            result = await search(self.spec.algorithm, backend, await self.reward(state, backend),
                                  self.messages(state), self.config(state))
        finally:
            u = result.usage if result is not None else None
            spent = 0 if u is None else u.prompt_tokens + u.completion_tokens
            state.calls.guard.settle(need, 0 if u is None else u.requests, spent)
        u = result.usage
        state.calls.usage.add_call(self.name, u.prompt_tokens, u.completion_tokens, u.seconds, cached=False,
                                   cached_prompt_tokens=u.cached_prompt_tokens, calls=u.requests)
        state.trace.append({"event": "search", "component": self.name, "model": handle.alias, **result.to_trace()})
        if result.stopped:
            self.note(state, fallback="search stopped early", reason=result.stopped)
        order = [result.answer_node] if result.answer_node is not None else []
        order += [i for i in result.answers if i != result.answer_node]
        return [Candidate(result.text(i), self.name, handle.alias, score=result.nodes[i].score,
                          token_ids=as_response(result.path(i)).token_ids, finish_reason=result.nodes[i].finish_reason) for i in order]

    def estimate(self, state: State) -> Estimate:
        """An upper bound on this search's cost for the query (`search_cost` with the prompt's token count)."""
        text = "\n".join(m["content"] for m in self.messages(state))
        return search_cost(self.spec, state.calls.estimate(self.spec.model, text, 0).tokens)


def search_cost(spec: SearchSpec, prompt_tokens: int) -> Estimate:
    """An upper bound on one search's cost per query, by its algorithm: (extension requests, tokens), where each
    request costs the prompt (`prompt_tokens`, template included) plus up to depth steps of path, as if uncached, and
    the generated tokens are every child's step_max_tokens (capped by the search's own budget.max_tokens). One source
    of truth for the technique's budget reservation and the architecture search's constraint pruning
    (lamina.search.space). With W = width, M = beam_width, D = depth (the rounds a path can grow), K = max(1, W // M):

      best_of_n        1 request, W whole answers of up to D steps
      beam             the root's W children, then up to D - 1 rounds of K nodes x M children
      dvts             the root's K children, then up to D - 1 rounds of K subtrees x M children
      particle_filter  the root's W children, then up to D - 1 rounds of up to W requests, W children in all
      astar            the root's M children, then up to W x D expansions of M children each

    A backend that cannot sample n children in one request (an OpenAI-compatible server without `n`) makes one
    request per child: more calls than counted here, the same tokens."""
    w, m, d, step = spec.width, max(1, spec.beam_width), spec.depth, spec.step_max_tokens
    k = max(1, w // m)
    requests, children = {
        "best_of_n": (1, w * d),  # whole answers: d steps' worth of tokens each
        "beam": (1 + (d - 1) * k, w + (d - 1) * k * m),
        "dvts": (1 + (d - 1) * k, k + (d - 1) * k * m),
        "particle_filter": (1 + (d - 1) * w, d * w),
        "astar": (1 + w * d, (1 + w * d) * m),
    }[spec.algorithm]
    generated = children * step
    if spec.budget.max_tokens is not None:
        generated = min(generated, spec.budget.max_tokens)
    return Estimate(requests, requests * (prompt_tokens + d * step) + generated)

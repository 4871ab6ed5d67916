"""reward: score each candidate and sort by the score. Modes: a judge's 1-10 rating (`judge`), a judge's
probability of a "Yes" verdict token (`logprob`), the generator's own confidence (`self_certainty`, `mean_logprob`:
no calls; the generator is asked for the logprobs they need, see Technique.logprobs_needed), or a learned verifier
file on the generator's hidden states (`verifier`)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from lamina.budget import Estimate
from lamina.rewards import Response, VerdictJudge
from lamina.rewards.judge import VERDICT_LOGPROBS
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.parse import parse_score
from lamina.techniques.spec_base import Component

if TYPE_CHECKING:
    from lamina.rewards.learned import LearnedVerifier

JUDGE_PROMPT = ("Question: {query}\n\nResponse: {response}\n\n"
                "Rate how good and correct the response is, from 1 (bad) to 10 (excellent). Reply with the number only.")
RewardMode = Literal["judge", "logprob", "self_certainty", "mean_logprob", "verifier"]
# modes scored from what the candidates carry (no model calls) -> the top logprobs their generator must return
OWN_CONFIDENCE = {"self_certainty": VERDICT_LOGPROBS, "mean_logprob": 0}


def check_verifier(mode_field: str, mode: str, verifier: str | None) -> None:
    """A spec check: mode `verifier` needs the `verifier` file, and only it takes one (ValueError names the field)."""
    if mode == "verifier" and not verifier:
        raise ValueError(f"{mode_field}: verifier needs the field `verifier: <a verifier file>`")
    if verifier and mode != "verifier":
        raise ValueError(f"verifier: is read only with {mode_field}: verifier (got {mode_field}: {mode})")


def check_spec_verifiers(spec: Any) -> None:
    """Before a run spends anything: every verifier file an ArchSpec's components name is readable, and was trained
    on one of the spec's local models (the others' candidates are re-read by that one). VerifierError naming the
    component, the file (and where it was looked for) and the models; nothing loaded stays bound."""
    from lamina.rewards.learned import VerifierError, load_verifier

    local = {alias: m.model for alias, m in spec.models.items() if m.backend == "local"}
    for component in (c for layer in spec.layers for c in layer if getattr(c, "verifier", None)):
        path = component.verifier
        where = f"component {component.name!r}: verifier {path}"
        if not Path(path).is_file():
            raise VerifierError(f"{where}: no such file (looked for {Path(path).resolve()}; a relative path is "
                                "read from the current directory)")
        verifier = load_verifier(path)
        matches = []
        for alias, model in local.items():
            try:
                matches.append(verifier.trained_on(model))
            except Exception as exc:  # a model that cannot be found fails here as it would when loaded
                raise VerifierError(f"{where}: model alias {alias!r} ({model}) cannot be read: {exc}") from None
        if not any(matches):
            models = ", ".join(f"{a}: {m}" for a, m in local.items()) or "none (only remote models)"
            raise VerifierError(f"{where} was trained on model {verifier.info.model!r} (identity "
                                f"{verifier.info.model_identity}); none of the spec's local models is it "
                                f"({models}); train one for them (lamina verifier train --model ...)")


async def own_scores(state: State, cands: list[Candidate], mode: str,
                     verifier: str | None = None, component: str = "verifier") -> list[float | None]:
    """Scores that need no judge call: the candidates' own confidence, or a learned verifier's P(correct) (its
    forward pass counted in `component`'s usage)."""
    if mode == "verifier":
        return await verifier_scores(state, cands, str(verifier), component)
    return [getattr(c, mode) for c in cands]


@lru_cache(maxsize=8)
def _load_verifier(path: str, mtime: float) -> "LearnedVerifier":
    from lamina.rewards.learned import LearnedVerifier

    return LearnedVerifier.load(path)


async def verifier_scores(state: State, cands: list[Candidate], path: str,
                          component: str = "verifier") -> list[float | None]:
    """A learned verifier's P(correct) of each candidate, read from the states of the local model that wrote it
    (the query's conversation, then the candidate's tokens). Its forward passes are usage of `component`: one call
    per model read, whose prompt tokens are the tokens the pass reads (the conversation once, each candidate's) and
    whose seconds are its wall time. In an ensemble, candidates of another local model are
    re-read (their text re-tokenized) by the verifier's own model when some candidates come from it. VerifierError
    for a missing file, a candidate of a model without local hidden states, candidates none of which come from
    the model the verifier was trained on, or candidates of another kind than it learnt to judge (a verifier of
    programs, `lamina verifier train --technique program`, judges executed programs only, and an answers' verifier
    answers only). An executed program that printed nothing scores None (nothing to pick)."""
    from lamina.rewards.learned import VerifierError

    try:
        verifier = _load_verifier(path, Path(path).stat().st_mtime)
    except OSError as exc:
        raise VerifierError(f"verifier: cannot read {path}: {exc}") from None
    of_programs = verifier.info.technique == "program"
    wrong = [c for c in cands if c.executed != of_programs]
    if wrong:
        raise VerifierError(f"verifier {path} was trained on {'programs' if of_programs else 'answers'} "
                            f"(technique {verifier.info.technique}); {len(wrong)} candidate(s) here are "
                            f"{'answers' if of_programs else 'executed programs'} (from {wrong[0].source!r})")
    bound: dict[str | None, Any] = {}  # alias -> the verifier bound to that alias's engine (its trained model)
    foreign: dict[str | None, VerifierError] = {}  # aliases of other models: their answers are read by the verifier's
    for alias in dict.fromkeys(c.model for c in cands):
        backend = state.calls.handle(alias).backend
        if not hasattr(backend, "engine"):
            raise VerifierError(f"verifier {path}: candidates of model alias {alias!r} ({backend.identity}) have no "
                                "hidden states here; a learned verifier reads the local engine's")
        engine = (await backend.engine()).engine
        try:
            bound[alias] = verifier.bind(engine, backend.model)
        except VerifierError as exc:
            foreign[alias] = exc
    if foreign and not bound:  # no candidate of the verifier's own model: nothing can read the others' answers
        raise next(iter(foreign.values()))
    reader = next(iter(bound.values()), None)
    scores: list[float | None] = [None] * len(cands)
    for alias in dict.fromkeys(c.model for c in cands):
        rows = [i for i, c in enumerate(cands) if c.model == alias and not c.printed_nothing]
        if not rows:
            continue
        start = time.perf_counter()
        if alias in bound:
            answers = [Response(cands[i].text, None, cands[i].token_ids) for i in rows]
            got, read = await bound[alias].score_counted(state.messages, answers)
        elif of_programs:  # the program's text is not kept, only its tokens in the model that wrote it
            raise VerifierError(f"verifier {path}: programs of model alias {alias!r} cannot be re-read by the "
                                "verifier's model; a verifier of programs judges its own model's programs")
        else:  # another model's answer, re-read (re-tokenized) by the model the verifier was trained on
            got, read = await reader.score_counted(state.messages, [Response(cands[i].text) for i in rows])
        state.calls.usage.add_call(component, read, 0, time.perf_counter() - start, cached=False)
        for i, score in zip(rows, got):
            scores[i] = score
    return scores


async def score_candidates(tech: Technique, state: State, mode: str,
                           verifier: str | None = None) -> list[Candidate]:
    """Copies of the candidates with `score` set; unscorable ones score None and are recorded in the trace."""
    cands = state.candidates
    if mode in OWN_CONFIDENCE or mode == "verifier":
        scores = await own_scores(state, cands, mode, verifier, tech.name)
        replies: list[str | None] = [None] * len(cands)
    elif mode == "logprob":
        async def ask(prompt: str, i: int):
            return (await tech.ask(state, prompt, call_index=i, max_tokens=1, temperature=0.0,
                                   logprobs=VERDICT_LOGPROBS))[0]

        verdicts = await VerdictJudge(ask).verdicts(state.query, [c.text for c in cands])
        scores, replies = [s for s, _ in verdicts], [out.text for _, out in verdicts]
    else:
        async def rate(i: int, cand: Candidate) -> str:
            prompt = JUDGE_PROMPT.format(query=state.query, response=cand.text.strip())
            return (await tech.ask(state, prompt, call_index=i))[0].text

        replies = list(await asyncio.gather(*(rate(i, c) for i, c in enumerate(cands))))
        scores = [parse_score(r) for r in replies]
    for i, (score, reply) in enumerate(zip(scores, replies)):
        if score is None:
            tech.note(state, fallback="unscored", candidate=i, reply=reply, mode=mode, rule="scores None, sorted last")
    return [replace(c, score=s) for c, s in zip(cands, scores)]


def by_score(candidates: list[Candidate]) -> list[Candidate]:
    """Highest score first; unscored last; ties keep their order."""
    return sorted(candidates, key=lambda c: -c.score if c.score is not None else float("inf"))


def score_estimate(tech: Technique, state: State, mode: str) -> Estimate:
    if mode in OWN_CONFIDENCE or mode == "verifier":
        return Estimate()
    longest = max((c.text for c in state.candidates), key=len, default="")
    max_tokens = 1 if mode == "logprob" else tech.max_tokens(state)
    return state.calls.estimate(tech.spec.model, JUDGE_PROMPT + state.query + longest, max_tokens, 1,
                                len(state.candidates))


class RewardSpec(Component):
    type: Literal["reward"]
    mode: RewardMode = "judge"
    verifier: str | None = None  # mode verifier: the verifier file (lamina verifier train)
    top_k: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _verifier_file(self) -> "RewardSpec":
        check_verifier("mode", self.mode, self.verifier)
        return self


class Reward(Technique):
    kind = "reward"
    spec_class = RewardSpec
    builtin = {"temperature": 0.0, "max_tokens": 8}
    spec: RewardSpec

    def logprobs_needed(self) -> int | None:
        return OWN_CONFIDENCE.get(self.spec.mode)

    async def run(self, state: State) -> list[Candidate]:
        ranked = by_score(await score_candidates(self, state, self.spec.mode, self.spec.verifier))
        return ranked[: self.spec.top_k] if self.spec.top_k else ranked

    def estimate(self, state: State) -> Estimate:
        return score_estimate(self, state, self.spec.mode)


"""vote: majority vote over extracted answers, Best-of-Majority, or inverse-entropy weighted vote."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Literal

from pydantic import model_validator

from lamina.answers import RegexExtract, extract
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.spec_base import Component


def tally(candidates: list[Candidate], weights: list[float]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for cand, weight in zip(candidates, weights):
        if cand.answer is not None:
            totals[cand.answer] += weight
    return dict(totals)


def winner(totals: dict[str, float], order: list[str]) -> str:
    """Highest total; ties go to the answer seen first."""
    return max(order, key=lambda a: (totals[a], -order.index(a)))


class VoteSpec(Component):
    """`extract` names the extractor whose keys group the answers (lamina.answers: the scorers' one equality);
    `regex` takes `pattern` (a group around the answer), `group` and `select` as a task's regex scorer does."""

    type: Literal["vote"]
    method: Literal["majority", "best_of_majority", "inverse_entropy"] = "majority"
    extract: Literal["auto", "number", "boxed", "phrase", "choice", "code", "grid", "text", "regex"] = "auto"
    pattern: str | None = None
    group: int | str | None = None
    select: Literal["first", "last"] = "last"
    keep: Literal["winner", "all"] = "winner"

    @model_validator(mode="after")
    def _regex(self) -> "VoteSpec":
        if self.extract == "regex":
            RegexExtract.build(self.pattern, self.group, self.select)  # ValueError names the field
        elif self.pattern is not None or self.group is not None:
            raise ValueError(f"pattern and group are only used with extract: regex, got extract {self.extract!r}")
        return self

    def regex(self) -> RegexExtract | None:
        return RegexExtract.build(self.pattern, self.group, self.select) if self.extract == "regex" else None


class Vote(Technique):
    kind = "vote"
    spec_class = VoteSpec
    spec: VoteSpec

    async def run(self, state: State) -> list[Candidate]:
        regex = self.spec.regex()
        cands = [replace(c, answer=extract(c.text, self.spec.extract, regex=regex)) for c in state.candidates]
        order = list(dict.fromkeys(c.answer for c in cands if c.answer is not None))
        if not order:
            self.note(state, fallback="no answer extracted", rule="candidates kept in order")
            return cands
        weights = self.weights(state, cands)
        totals = tally(cands, weights)
        best = winner(totals, order)
        group = [c for c in cands if c.answer == best]
        if self.spec.method == "best_of_majority":
            group.sort(key=lambda c: -_quality(c))
        self.note(state, votes=totals, winner=best, method=self.spec.method)
        if self.spec.keep == "winner":
            return group
        ranked = sorted(order, key=lambda a: (-totals[a], order.index(a)))
        rest = [c for a in ranked[1:] for c in cands if c.answer == a] + [c for c in cands if c.answer is None]
        return group + rest

    def weights(self, state: State, cands: list[Candidate]) -> list[float]:
        if self.spec.method != "inverse_entropy":
            return [1.0] * len(cands)
        if any(c.mean_entropy is None for c in cands):
            self.note(state, fallback="no logprobs for inverse-entropy vote", rule="unweighted majority")
            return [1.0] * len(cands)
        return [1.0 / max(c.mean_entropy or 0.0, 1e-3) for c in cands]


def _quality(cand: Candidate) -> float:
    if cand.score is not None:
        return cand.score
    if cand.mean_logprob is not None:
        return cand.mean_logprob
    return 0.0

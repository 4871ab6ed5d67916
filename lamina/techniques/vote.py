"""vote: majority vote over extracted answers, Best-of-Majority, or inverse-entropy weighted vote; the majority's
votes may be weighted by a reward of each sample (`weights`): its self-certainty (nats, >= 0), its mean token
probability exp(mean log-prob) in (0, 1], or a learned verifier's P(correct) in [0, 1]."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import Literal

from pydantic import model_validator

from lamina.answers import RegexExtract, extract
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.reward import OWN_CONFIDENCE, check_verifier, own_scores
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
    weights: Literal["none", "self_certainty", "mean_logprob", "verifier"] = "none"
    verifier: str | None = None  # weights verifier: the verifier file (lamina verifier train)

    @model_validator(mode="after")
    def _one_weighting(self) -> "VoteSpec":
        if self.method == "inverse_entropy" and self.weights != "none":
            raise ValueError(f"weights: {self.weights} cannot weight method inverse_entropy (its own weights); "
                             "use method majority")
        check_verifier("weights", self.weights, self.verifier)
        return self

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

    def logprobs_needed(self) -> int | None:
        if self.spec.method == "inverse_entropy":
            return OWN_CONFIDENCE["self_certainty"]
        return OWN_CONFIDENCE.get(self.spec.weights)

    async def run(self, state: State) -> list[Candidate]:
        regex = self.spec.regex()
        cands = [replace(c, answer=extract(c.text, self.spec.extract, regex=regex)) for c in state.candidates]
        order = list(dict.fromkeys(c.answer for c in cands if c.answer is not None))
        if not order:
            self.note(state, fallback="no answer extracted", rule="candidates kept in order")
            return cands
        weights = await self.weights(state, cands)
        totals = tally(cands, weights)
        best = winner(totals, order)
        group = [c for c in cands if c.answer == best]
        if self.spec.method == "best_of_majority":
            group.sort(key=lambda c: -_quality(c))
        self.note(state, votes=totals, winner=best, method=self.spec.method, weights=self.spec.weights)
        if self.spec.keep == "winner":
            return group
        ranked = sorted(order, key=lambda a: (-totals[a], order.index(a)))
        rest = [c for a in ranked[1:] for c in cands if c.answer == a] + [c for c in cands if c.answer is None]
        return group + rest

    async def weights(self, state: State, cands: list[Candidate]) -> list[float]:
        """One positive weight per candidate; unweighted (all 1) when any candidate lacks what the weighting reads."""
        if self.spec.method == "inverse_entropy":
            scores, kind = [c.mean_entropy for c in cands], "inverse-entropy vote"
        elif self.spec.weights == "none":
            return [1.0] * len(cands)
        else:
            scores = await own_scores(state, cands, self.spec.weights, self.spec.verifier, self.name)
            kind = f"weights {self.spec.weights}"
        # a program that printed nothing has no score and casts no vote
        if any(s is None for s, c in zip(scores, cands) if not c.printed_nothing):
            self.note(state, fallback=f"no scores for {kind}", rule="unweighted majority")
            return [1.0] * len(cands)
        if self.spec.method == "inverse_entropy":
            return [1.0 / max(s or 0.0, 1e-3) for s in scores]
        if self.spec.weights == "mean_logprob":
            return [math.exp(s or 0.0) for s in scores]
        return [max(s or 0.0, 0.0) for s in scores]


def _quality(cand: Candidate) -> float:
    if cand.score is not None:
        return cand.score
    if cand.mean_logprob is not None:
        return cand.mean_logprob
    return 0.0

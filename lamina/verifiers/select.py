"""Offline selection among one question's samples: best-of-N by a score and (weighted) majority vote, so that every
selector of a benchmark picks among the same drawn samples. Grouping and ties follow the `vote` technique (its
`tally` and `winner`: equal answer keys are one answer, ties go to the answer seen first)."""
from __future__ import annotations

from typing import Sequence

from lamina.techniques.base import Candidate
from lamina.techniques.vote import tally, winner


def best_of(scores: Sequence[float | None]) -> int:
    """The index of the highest score (the first on ties; None ranks below every number); 0 when all are None."""
    ranked = [(s, -i) for i, s in enumerate(scores) if s is not None]
    return -max(ranked)[1] if ranked else 0


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> int:
    """The index of the first sample whose answer key wins the (weighted) majority; samples without an answer (None)
    do not vote; 0 when none has one. weights: one non-negative weight per sample (None: all 1)."""
    order = list(dict.fromkeys(a for a in answers if a is not None))
    if not order:
        return 0
    votes = list(weights) if weights is not None else [1.0] * len(answers)
    totals = tally([Candidate("", "", answer=a) for a in answers], votes)
    best = winner(totals, order)
    return list(answers).index(best)

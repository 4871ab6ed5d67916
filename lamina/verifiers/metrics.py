"""How well scores tell right samples from wrong: AUROC, expected calibration error, best-of-N selection."""
from __future__ import annotations

from collections import defaultdict


def auroc(scores: list[float], labels: list[int]) -> float | None:
    """P(a right sample scores above a wrong one), ties counting half; None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranked = sorted(scores)
    ranks: dict[float, float] = {}
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1] == ranked[i]:
            j += 1
        ranks[ranked[i]] = (i + j) / 2 + 1  # the average 1-based rank of a run of ties
        i = j + 1
    rank_sum = sum(ranks[s] for s in pos)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def ece(probs: list[float], labels: list[int], bins: int = 10) -> float | None:
    """Expected calibration error over `bins` equal-width probability bins (weighted by bin size)."""
    if not probs:
        return None
    groups: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for p, y in zip(probs, labels):
        groups[min(int(p * bins), bins - 1)].append((p, y))
    return sum(abs(sum(p for p, _ in g) - sum(y for _, y in g)) for g in groups.values()) / len(probs)


def by_question(question_ids: list[str], values: list) -> dict[str, list]:
    grouped: dict[str, list] = defaultdict(list)
    for q, v in zip(question_ids, values):
        grouped[q].append(v)
    return grouped


def selection_accuracy(question_ids: list[str], scores: list[float], labels: list[int]) -> float | None:
    """Best-of-N: per question the highest-scored sample (the first on ties); the fraction of those right."""
    picks = [max(rows, key=lambda r: r[0])[1] for rows in by_question(
        question_ids, [(s, y) for s, y in zip(scores, labels)]).values()]
    return sum(picks) / len(picks) if picks else None


def coverage(question_ids: list[str], labels: list[int]) -> float | None:
    """The fraction of questions with at least one right sample (the ceiling of any selector)."""
    groups = by_question(question_ids, labels)
    return sum(any(v) for v in groups.values()) / len(groups) if groups else None


def first_sample_accuracy(question_ids: list[str], labels: list[int]) -> float | None:
    """The fraction of questions whose first sample is right (one sample, no selection)."""
    groups = by_question(question_ids, labels)
    return sum(v[0] for v in groups.values()) / len(groups) if groups else None

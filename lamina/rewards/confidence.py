"""The generator's own confidence as a reward: mean token log-prob, mean entropy, self-certainty.

Self-certainty (Kang et al. 2025, "Scalable Best-of-N Selection via Self-Certainty") of a response is the mean
over its tokens of KL(U || p): how far each next-token distribution p is from uniform over the vocabulary,

    KL(U || p) = -log V - (1/V) * sum_j log p_j        (V: vocabulary size; in nats, >= 0; 0 for a uniform p).

Backends return only the top-k logprobs of each position, so p is approximated: the k listed tokens keep their
probabilities and the leftover mass r = 1 - sum(top-k) is spread evenly over the V - k unlisted tokens (r is
floored at LEFTOVER_FLOOR). The V-dependence is then weak (the listed tokens' terms are weighted 1/V) and the
score is dominated by -log r: a position is certain when its top-k hold nearly all the mass. Ranking candidates
of one model needs no exact V; pass the model's vocabulary size when it is known.
"""
from __future__ import annotations

import math
from typing import Callable

from lamina.backends.base import TokenLP
from lamina.rewards.base import OutcomeRewardModel, ProcessRewardModel, Question, Response, Score

DEFAULT_VOCAB_SIZE = 49152  # SmolLM2's; only the 1/V-weighted terms depend on it
LEFTOVER_FLOOR = 1e-9


def mean_logprob(logprobs: list[TokenLP] | None) -> float | None:
    """The mean per-token log-probability of the sampled tokens (nats, <= 0); None without logprobs."""
    if not logprobs:
        return None
    return sum(lp.logprob for lp in logprobs) / len(logprobs)


def _top(lp: TokenLP) -> dict[str, float]:
    """The listed alternatives of a position, the sampled token among them."""
    top = dict(lp.top or {})
    top.setdefault(lp.token, lp.logprob)
    return top


def mean_entropy(logprobs: list[TokenLP] | None) -> float | None:
    """Mean per-token entropy from the top-k alternatives; the leftover mass counts as one more outcome."""
    if not logprobs or not any(lp.top for lp in logprobs):
        return None
    total = 0.0
    for lp in logprobs:
        probs = [math.exp(v) for v in (lp.top or {lp.token: lp.logprob}).values()]
        rest = max(0.0, 1.0 - sum(probs))
        total -= sum(p * math.log(p) for p in probs + [rest] if p > 0)
    return total / len(logprobs)


def token_self_certainty(lp: TokenLP, vocab_size: int = DEFAULT_VOCAB_SIZE) -> float:
    """KL(U || p) of one position (nats, >= 0), p approximated from its top-k (see the module docstring)."""
    listed = [min(v, 0.0) for v in _top(lp).values()]
    k = len(listed)
    if vocab_size <= k:
        raise ValueError(f"vocab_size {vocab_size} must exceed the {k} listed alternatives")
    leftover = max(1.0 - sum(math.exp(v) for v in listed), LEFTOVER_FLOOR)
    rest = vocab_size - k
    total_log = sum(listed) + rest * math.log(leftover / rest)
    return max(0.0, -math.log(vocab_size) - total_log / vocab_size)


def self_certainty(logprobs: list[TokenLP] | None, vocab_size: int = DEFAULT_VOCAB_SIZE) -> float | None:
    """The mean over tokens of KL(U || p) (nats, >= 0; higher: more certain); None without top-k alternatives."""
    if not logprobs or not any(lp.top for lp in logprobs):
        return None
    return sum(token_self_certainty(lp, vocab_size) for lp in logprobs) / len(logprobs)


class Confidence(OutcomeRewardModel, ProcessRewardModel):
    """A confidence measure of the tokens as a reward: `score` measures each answer's tokens, `score_steps` the
    tokens of each prefix (steps[:j + 1]). Needs the answers' logprobs; None where they are missing."""

    def __init__(self, name: str, measure: Callable[[list[TokenLP] | None], float | None]) -> None:
        self.name = name
        self.measure = measure

    async def score(self, question: Question, answers: list[Response]) -> list[Score]:
        return [self.measure(a.logprobs) for a in answers]

    async def score_steps(self, question: Question, steps_per_answer: list[list[Response]]) -> list[list[Score]]:
        out = []
        for steps in steps_per_answer:
            prefix: list[TokenLP] = []
            row: list[Score] = []
            missing = False  # a step without logprobs leaves its prefix and every longer one unscored
            for step in steps:
                missing = missing or step.logprobs is None
                prefix += step.logprobs or []
                row.append(None if missing else self.measure(prefix))
            out.append(row)
        return out


def mean_logprob_reward() -> Confidence:
    """Mean token log-prob (nats, in (-inf, 0]); needs the sampled tokens' logprobs (logprobs >= 0)."""
    return Confidence("logprob", mean_logprob)


def self_certainty_reward(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Confidence:
    """Self-certainty (nats, >= 0); needs top-k alternatives (logprobs >= 1; 20 recommended)."""
    return Confidence("self_certainty", lambda lps: self_certainty(lps, vocab_size))

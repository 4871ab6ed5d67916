"""Scoring the paths of a search with a reward model (lamina.rewards): one score per path, for its last step.

A path is given to the reward as ONE step holding the whole prefix (its steps' texts, logprobs and token ids
concatenated): a process reward model's score of that step is its score of the prefix, so every implementation
(confidence, judge, learned process verifier) costs one evaluation per path however deep it is, where scoring
every step of every path again would cost its depth. An outcome-only reward (e.g. TestsPassed) scores complete
answers; partial ones score None (the algorithms rank None lowest, and particle filtering weighs it as the lowest
known score).
"""
from __future__ import annotations

from lamina.rewards.base import OutcomeRewardModel, ProcessRewardModel, Question, Response, Score
from lamina.decoding.tree import Node

Reward = ProcessRewardModel | OutcomeRewardModel


def as_response(path: list[Node]) -> Response:
    """The prefix as one Response; logprobs/token_ids None when any step lacks them."""
    logprobs = None if any(n.logprobs is None for n in path) else [lp for n in path for lp in n.logprobs or ()]
    token_ids = None if any(n.token_ids is None for n in path) else [t for n in path for t in n.token_ids or ()]
    return Response("".join(n.text for n in path), logprobs, token_ids)


async def score_paths(reward: Reward, question: Question, paths: list[list[Node]],
                      finished: list[bool]) -> tuple[list[Score], int]:
    """([len(paths)] scores, reward calls made: one per path sent to the reward model)."""
    if not paths:
        return [], 0
    if isinstance(reward, ProcessRewardModel):
        rows = await reward.score_steps(question, [[as_response(p)] for p in paths])
        return [row[-1] if row else None for row in rows], len(paths)
    chosen = [i for i, done in enumerate(finished) if done]
    scores: list[Score] = [None] * len(paths)
    if chosen:
        got = await reward.score(question, [as_response(paths[i]) for i in chosen])
        for i, score in zip(chosen, got):
            scores[i] = score
    return scores, len(chosen)

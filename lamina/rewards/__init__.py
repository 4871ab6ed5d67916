"""Rewards: outcome reward models score whole answers, process reward models each step of partial ones
(`base.py`, the interface). Implementations that need no extra model: the generator's confidence
(`confidence.py`: mean log-prob, self-certainty), an LLM judge's verdict probability (`judge.py`), a task's
tests run in the sandbox (`execution.py`); learned verifiers on the model's hidden states (`learned.py`:
outcome `LearnedVerifier`, process `ProcessVerifier`).

Layering: rewards sit beside techniques (techniques use them); they may import calls, backends, answers, sandbox
and the engine, never techniques, eval, server or architecture."""
from __future__ import annotations

from lamina.rewards.base import (OutcomeRewardModel, ProcessRewardModel, Question, Response, Score, messages_of,
                                 query_of)
from lamina.rewards.confidence import (Confidence, mean_entropy, mean_logprob, mean_logprob_reward, self_certainty,
                                       self_certainty_reward)
from lamina.rewards.execution import TestsPassed
from lamina.rewards.judge import VerdictJudge, verdict_probability

__all__ = ["Confidence", "OutcomeRewardModel", "ProcessRewardModel", "Question", "Response", "Score", "TestsPassed",
           "VerdictJudge", "mean_entropy", "mean_logprob", "mean_logprob_reward", "messages_of", "query_of",
           "self_certainty", "self_certainty_reward", "verdict_probability"]

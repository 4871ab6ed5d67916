"""The reward interface shared by selectors (vote weights, reward/rank modes) and step-level search.

An outcome reward model (ORM) scores whole answers; a process reward model (PRM) scores every step of partial
ones. Both are async and batched: one call scores every answer of one question, so an implementation can batch
its model calls (a judge's calls run concurrently, a learned verifier runs one forward pass over the batch).

Scores: higher is better, comparable only among the answers of one call of one reward model (a self-certainty and
a probability do not share a scale); each implementation documents its range. None: the model cannot score that
answer (no logprobs were returned, an unparsable verdict); callers decide what None means (ranked last, say).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Union

from lamina.backends.base import Completion, TokenLP

Messages = list[dict[str, str]]
Question = Union[str, Messages]  # the user's question, or the whole conversation the answers reply to
Score = Union[float, None]


@dataclass(slots=True)
class Response:
    """An answer (or one step of one) as the generator wrote it: its text and, where the backend returned them, its
    tokens' logprobs (with top-k alternatives when asked for) and token ids."""

    text: str
    logprobs: list[TokenLP] | None = None
    token_ids: list[int] | None = None

    @classmethod
    def of(cls, completion: Completion) -> "Response":
        return cls(completion.text, completion.logprobs, completion.token_ids)


def messages_of(question: Question) -> Messages:
    """The conversation a question stands for: a string is one user message."""
    return [{"role": "user", "content": question}] if isinstance(question, str) else list(question)


def query_of(question: Question) -> str:
    """The last user message's text (what a judge's prompt quotes)."""
    if isinstance(question, str):
        return question
    users = [m.get("content", "") for m in question if m.get("role") == "user"]
    return str(users[-1] if users else question[-1].get("content", ""))


class OutcomeRewardModel(ABC):
    """Scores full answers to one question."""

    name: str = "orm"

    @abstractmethod
    async def score(self, question: Question, answers: list[Response]) -> list[Score]:
        """[len(answers)] scores, in the answers' order (higher is better; None: cannot score)."""


class ProcessRewardModel(ABC):
    """Scores each step of partial answers to one question."""

    name: str = "prm"

    @abstractmethod
    async def score_steps(self, question: Question, steps_per_answer: list[list[Response]]) -> list[list[Score]]:
        """[len(steps_per_answer)][len(steps_per_answer[i])]: entry [i][j] scores answer i after its step j (the
        prefix steps[:j + 1]); higher is better, None: cannot score."""

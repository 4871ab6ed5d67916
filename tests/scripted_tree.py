"""A scripted backend with branches, and a scripted process reward, for the search algorithms' tests.

ScriptedTree: child i of a node at depth d says `step(d, i, params)` ("<digit>\\n" by default: the digit i, capped
at 3; at depth `answer_depth` the step is "done" and ends the answer with finish_reason "stop"). With `sampled`, the
digit is drawn from (params.seed, i) instead, so a search's tree depends on its seed only. A step costs one token per
whitespace-separated word (at least 1). It records every request and which handles are live.
DigitSum: a process reward scoring a prefix by the sum of its digits: the optimum takes the largest child each step.
"""
from __future__ import annotations

import random

from lamina.backends.base import Backend, Messages
from lamina.backends.branching import Branching, Step, Steps
from lamina.engine.sampling_params import SamplingParams
from lamina.rewards.base import ProcessRewardModel, Question, Response, Score


class ScriptedTree(Backend, Branching):
    kind = "scripted-tree"

    def __init__(self, answer_depth: int = 3, sampled: bool = False) -> None:
        super().__init__("scripted-tree")
        self.answer_depth = answer_depth
        self.sampled = sampled
        self.nodes: dict[str, tuple[str, int]] = {}  # handle -> (text so far, depth)
        self.requests: list[tuple[str, SamplingParams]] = []

    def step(self, depth: int, index: int, params: SamplingParams) -> str:
        if depth >= self.answer_depth:
            return "done"
        digit = random.Random(f"{params.seed}/{index}").randrange(10) if self.sampled else min(index, 3)
        return f"{digit}\n"

    async def open_tree(self, messages: Messages) -> str:
        handle = f"t{len(self.requests)}-{len(self.nodes)}"
        self.nodes[handle] = ("", 0)
        return handle

    async def extend(self, handle: str, params: SamplingParams) -> Steps:
        self.requests.append((handle, params))
        text, depth = self.nodes[handle]
        steps = Steps(prompt_tokens=len(text.split()) + 5, cached_prompt_tokens=len(text.split()))
        for i in range(params.n):
            if params.stop:
                step, d = self.step(depth, i, params), depth + 1
            else:  # a whole answer
                step, d = "".join(self.step(k, i, params) for k in range(depth, self.answer_depth + 1)), self.answer_depth
            tokens = max(1, len(step.split()))
            finish = "stop"
            if tokens > params.max_tokens:
                step, tokens, finish = " ".join(step.split()[: params.max_tokens]), params.max_tokens, "length"
            child = f"{handle}.{i}"
            self.nodes[child] = (text + step, d)
            steps.append(Step(child, step, None, None, finish, tokens))
        return steps

    async def release(self, handle: str) -> None:
        del self.nodes[handle]


class DigitSum(ProcessRewardModel):
    """Each prefix's score: the sum of the digits in it; counts its calls (answers scored)."""

    def __init__(self) -> None:
        self.scored = 0

    async def score_steps(self, question: Question, steps_per_answer: list[list[Response]]) -> list[list[Score]]:
        self.scored += len(steps_per_answer)
        out = []
        for steps in steps_per_answer:
            total, row = 0, []
            for step in steps:
                total += sum(int(c) for c in step.text if c.isdigit())
                row.append(float(total))
            out.append(row)
        return out

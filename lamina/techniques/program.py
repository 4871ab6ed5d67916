"""program: program-aided reasoning. The model writes Python that prints the answer; each sample runs in the sandbox
(lamina.sandbox: no network, time/memory limits) and the last non-empty line it prints becomes the candidate's
`text` and `answer`. A program that fails (raises, times out, exceeds memory, prints nothing) answers nothing: its
candidate has text "" and answer None, and the trace notes why. Executed candidates come first, in sample order.
The candidate keeps the program's tokens (token_ids, logprobs), so confidence and learned verifiers score the
program that produced the answer."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Literal

from pydantic import Field

from lamina.rewards.execution import SANDBOX_WORKERS, program_of
from lamina.techniques.base import Candidate, State
from lamina.techniques.generate import Generate, GenerateSpec

PROGRAM_PROMPT = ("Write a short Python program that computes the answer to this question and prints only the "
                  "final answer.\n\nQuestion: {query}\n\nReply with the program in a ```python code block.")
MAX_ANSWER_CHARS = 200


class ProgramSpec(GenerateSpec):
    type: Literal["program"]  # type: ignore[assignment]
    prompt: str = PROGRAM_PROMPT  # the user message; {query} is the question
    timeout_s: float = Field(5.0, gt=0, le=60)  # per program, wall and CPU
    memory_mb: int = Field(256, ge=32, le=4096)


def printed_answer(stdout: str) -> str | None:
    """The last non-empty line a program printed (stripped, at most MAX_ANSWER_CHARS), or None."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    return lines[-1][:MAX_ANSWER_CHARS] if lines else None


class Program(Generate):
    kind = "program"
    spec_class = ProgramSpec
    spec: ProgramSpec

    def messages(self, state: State) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.spec.system}] if self.spec.system else []
        return system + [{"role": "user", "content": self.spec.prompt.replace("{query}", state.query)}]

    async def run(self, state: State) -> list[Candidate]:
        from lamina.sandbox import run_code

        slots = asyncio.Semaphore(SANDBOX_WORKERS)

        async def execute(i: int, cand: Candidate) -> Candidate:
            async with slots:
                result = await asyncio.to_thread(run_code, program_of(cand.text), timeout_s=self.spec.timeout_s,
                                                 memory_mb=self.spec.memory_mb)
            answer = printed_answer(result.stdout) if result.completed else None
            if answer is None:
                why = ("timeout" if result.timed_out else "memory limit" if result.memory_exceeded
                       else "printed nothing" if result.completed else _last_line(result.stderr))
                self.note(state, fallback="program failed", candidate=i, error=why, rule="no answer")
            return replace(cand, text=answer or "", answer=answer)

        programs = await super().run(state)
        executed = await asyncio.gather(*(execute(i, c) for i, c in enumerate(programs)))
        return [c for c in executed if c.answer is not None] + [c for c in executed if c.answer is None]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "exited with an error"

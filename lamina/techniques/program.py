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
# PAL's few-shot turns (Gao et al. 2022, "PAL: Program-aided Language Models"), written for small chat models: short
# straight-line programs, one per question kind (a word problem, a conversion that multiplies, one that divides).
# On the embedded SmolLM2-135M they lift the programs that run and print an answer from about a third to two
# thirds, and program-aided vote on the dev splits of arith-3 from 0.08 to 0.43 (README, Verifiers).
PROGRAM_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("A box holds 6 eggs. Tom buys 4 boxes and then breaks 3 eggs. How many eggs does Tom have now?",
     "eggs = 6 * 4\neggs = eggs - 3\nprint(eggs)"),
    ("How many ounces are in 2 pounds?", "ounces_per_pound = 16\nprint(2 * ounces_per_pound)"),
    ("How many dozens are 48 eggs?", "eggs_per_dozen = 12\nprint(48 / eggs_per_dozen)"),
)
MAX_ANSWER_CHARS = 200
PROGRAM_MIN_TOKENS = 128  # max_tokens a program needs whatever the task's answer length (verifier training, benchmark)


class ProgramSpec(GenerateSpec):
    type: Literal["program"]  # type: ignore[assignment]
    prompt: str = PROGRAM_PROMPT  # the user message; {query} is the question
    # few-shot turns before the question, as PAL's prompts (Gao et al. 2022): each [question, program] becomes the
    # user message `prompt` with {query} = question, then an assistant reply with the program in a python block;
    # [] asks zero-shot
    examples: list[tuple[str, str]] = Field(default_factory=lambda: [tuple(e) for e in PROGRAM_EXAMPLES])
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
        messages = [{"role": "system", "content": self.spec.system}] if self.spec.system else []
        for question, program in self.spec.examples:
            messages += [{"role": "user", "content": self.spec.prompt.replace("{query}", question)},
                         {"role": "assistant", "content": f"```python\n{program.strip()}\n```"}]
        return messages + [{"role": "user", "content": self.spec.prompt.replace("{query}", state.query)}]

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
            return replace(cand, text=answer or "", answer=answer, executed=True)

        programs = await super().run(state)
        executed = await asyncio.gather(*(execute(i, c) for i, c in enumerate(programs)))
        return [c for c in executed if c.answer is not None] + [c for c in executed if c.answer is None]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "exited with an error"

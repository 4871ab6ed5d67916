"""Score an architecture on a task: examples run concurrently, each result committed to the run store as it finishes,
so an interrupted run resumes without redoing finished examples."""
from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lamina.errors import BackendError, LaminaError
from lamina.eval.scorers import Scorer
from lamina.eval.stats import RunSummary, summarize
from lamina.eval.store import ResultRow, RunStore
from lamina.tasks.scorer_spec import ScorerSpec
from lamina.tasks.task import Example, Task


@dataclass(slots=True)
class EvalOptions:
    split: str | None = None
    limit: int | None = None
    concurrency: int = 4
    progress: bool = True
    score_samples: bool = True  # score every first-layer sample too, for pass@k / coverage


def arch_hash(arch: Any) -> str:
    return hashlib.sha256(arch.spec.model_dump_json().encode()).hexdigest()[:16]


def default_run_path(arch_name: str, task: Task, split: str, root: str | Path = "runs") -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{arch_name}__{task.name}__{split}").strip("-")
    return Path(root) / f"{slug}.sqlite"


def run_config(arch: Any, task: Task, options: EvalOptions, scorer: ScorerSpec | None = None) -> dict[str, Any]:
    split = options.split or task.spec.default_split
    return {"task": task.name, "task_hash": task.fingerprint(), "task_source": task.source, "split": split,
            "limit": options.limit, "arch": arch.name, "arch_hash": arch_hash(arch),
            "arch_spec": arch.spec.model_dump(mode="json"), "seed": arch.spec.seed,
            "concurrency": options.concurrency, "scorer": (scorer or task.scorer).identity()}


class Evaluator:
    def __init__(self, arch: Any, task: Task, store: RunStore, options: EvalOptions,
                 scorer: Scorer | None = None, on_example: Callable[[ResultRow], None] | None = None) -> None:
        self.arch, self.task, self.store, self.options = arch, task, store, options
        self.on_example = on_example
        self.scorer = scorer or Scorer.from_spec(task.scorer)
        self.failures: list[tuple[str, str]] = []
        self.scores: list[float] = []
        self.attempt = 1

    async def run(self) -> RunSummary:
        examples = self.task.examples(self.options.split, self.options.limit)
        if hasattr(self.arch, "check"):  # a spec's verifier files: refused before any example is run and stored
            self.arch.check()
        self.scorer.prepare()
        self.attempt = self.store.begin(run_config(self.arch, self.task, self.options, self.scorer))
        wanted = {e.id for e in examples}
        done = [r for r in self.store.rows() if r.example_id in wanted]
        finished = {r.example_id for r in done}
        todo = [(i, e) for i, e in enumerate(examples) if e.id not in finished]
        self.scores = [r.score for r in done]
        bar = self._bar(len(examples), len(done))
        slots = asyncio.Semaphore(max(1, self.options.concurrency))
        try:
            await asyncio.gather(*(self._guarded(slots, i, e, bar) for i, e in todo))
        finally:
            if bar is not None:
                bar.close()
        rows = [r for r in self.store.rows() if r.example_id in wanted]
        return summarize(self.arch.name, rows)

    def _bar(self, total: int, initial: int):
        if not self.options.progress:
            return None
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, unit="ex", desc=f"{self.arch.name} on {self.task.name}",
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        self._postfix(bar)
        return bar

    def _postfix(self, bar) -> None:
        if bar is not None and self.scores:
            bar.set_postfix(acc=f"{sum(self.scores) / len(self.scores):.3f}", refresh=False)

    async def _guarded(self, slots: asyncio.Semaphore, index: int, example: Example, bar) -> None:
        async with slots:
            try:
                row = await self._one(index, example)
            except (BackendError, OSError) as exc:  # transient: not stored, so a rerun retries it
                self.failures.append((example.id, f"{type(exc).__name__}: {exc}"))
                return
            except LaminaError as exc:  # deterministic (budget, bad request): stored as a wrong answer
                row = ResultRow(example.id, index, "", None, example.reference, 0.0,
                                error=f"{type(exc).__name__}: {exc}", attempt=self.attempt)
            self.store.add(row)
            self.scores.append(row.score)
            if self.on_example is not None:
                self.on_example(row)
            if bar is not None:
                self._postfix(bar)
                bar.update(1)

    async def _one(self, index: int, example: Example) -> ResultRow:
        start = time.perf_counter()
        messages = self.task.messages(example)
        question = messages[-1]["content"]
        result = await self.arch.run(messages, tests=example.public_tests or None)
        score = await self.scorer.score(result.answer, example, question)
        sample_each = self.options.score_samples and self.scorer.kind != "judge"
        samples = [c.text for c in result.first_layer_samples()] if sample_each else []
        sample_scores: list[float] = []
        if len(samples) > 1:
            scored = await asyncio.gather(*(self.scorer.score(s, example, question) for s in samples))
            sample_scores = [s.value for s in scored]
        return ResultRow(example.id, index, result.answer, score.extracted, example.reference, score.value,
                         score.detail, sample_scores, result.usage.to_dict(), result.trace,
                         seconds=time.perf_counter() - start, attempt=self.attempt)


async def evaluate(arch: Any, task: Task, store: RunStore, options: EvalOptions | None = None,
                   scorer: Scorer | None = None,
                   on_example: Callable[[ResultRow], None] | None = None) -> tuple[RunSummary, list]:
    """Run (or resume) an eval; returns the summary and the examples that failed transiently (rerun to retry).
    `scorer` scores the answers (e.g. with an explicit judge backend); None builds one from `task.scorer`.
    `on_example(row)` is called with each newly finished example's row, once it is committed to the store."""
    evaluator = Evaluator(arch, task, store, options or EvalOptions(), scorer, on_example)
    summary = await evaluator.run()
    return summary, evaluator.failures

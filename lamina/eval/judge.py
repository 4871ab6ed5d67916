"""Pairwise LLM judge against a baseline run's answers (Arena-Hard / AlpacaEval style win rate).

Each example is judged twice with the answers in both orders, cancelling position bias:
win = 1, tie = 0.5, loss = 0, averaged over the two orders.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import SpecError
from lamina.eval.store import RunStore

if TYPE_CHECKING:
    from lamina.backends.base import Backend
    from lamina.tasks.task import Example

JUDGE_PROMPT = """You are judging two answers to the same question.

Question:
{question}

Answer A:
{a}

Answer B:
{b}

Which answer is more correct and helpful? Reply with exactly one of: A, B, tie."""

_BASELINES: dict[str, dict[str, str]] = {}
_BACKENDS: dict[tuple[str, str], Any] = {}


def baseline_answers(path: str) -> dict[str, str]:
    if path not in _BASELINES:
        if not Path(path).is_file():
            raise SpecError(f"judge scorer: baseline run {path!r} not found (run `lamina eval` for it first)")
        with RunStore.open_existing(path) as store:
            _BASELINES[path] = {r.example_id: r.prediction for r in store.rows()}
    return _BASELINES[path]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply: its first word if that is one, else a 'tie' or a capital A/B in it."""
    text = text.strip()
    first = re.match(r"\W*(tie|a|b)\b", text, re.IGNORECASE)
    if first:
        return "tie" if first.group(1).lower() == "tie" else first.group(1).upper()
    if re.search(r"\btie\b", text, re.IGNORECASE):
        return "tie"
    letter = re.search(r"\b([AB])\b", text)
    return letter.group(1) if letter else None


async def judge_score(text: str, example: "Example", *, baseline: str, question: str = "", model: str = "default",
                      backend: str = "local", max_tokens: int = 8, judge: "Backend | None" = None,
                      **backend_opts: Any) -> tuple[float, str]:
    """(points in [0, 1], detail) of `text` against the baseline run's answer to `example`: win 1, tie or unparseable
    verdict 0.5, loss 0, averaged over both orders. `judge` is the judge's backend; None uses the cached
    `get_backend(backend, model, **backend_opts)`."""
    base = baseline_answers(baseline).get(example.id)
    if base is None:
        raise SpecError(f"judge scorer: baseline run {baseline!r} has no answer for example {example.id!r}")
    judge = judge if judge is not None else _backend(backend, model, backend_opts)
    from lamina.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
    points, verdicts = 0.0, []
    for a, b, ours in ((text, base, "A"), (base, text, "B")):
        prompt = JUDGE_PROMPT.format(question=question or example.id, a=a, b=b)
        out = await judge.complete([{"role": "user", "content": prompt}], None, params)
        verdict = parse_verdict(out[0].text if out else "")
        verdicts.append(verdict)
        points += 1.0 if verdict == ours else 0.5 if verdict in ("tie", None) else 0.0
    return points / 2, f"verdicts={verdicts} (candidate was A, then B)"


def _backend(kind: str, model: str, opts: dict[str, Any]):
    key = (kind, model)
    if key not in _BACKENDS:
        from lamina.backends import get_backend

        _BACKENDS[key] = get_backend(kind, model, **opts)
    return _BACKENDS[key]

"""Process verifier training, Math-Shepherd style (Wang et al. 2024): split each sampled answer into steps (its
lines), continue every step's prefix with k samples of the same model, and label the prefix with the fraction of
continuations that reach a right answer (the task's scorer decides); the complete answer keeps its own 0/1 label.
The probe reads the states at the last token of each step and is fitted on those soft labels."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from tqdm import tqdm

from lamina.rewards.learned import ProcessVerifier, VerifierInfo, step_features, train_probe
from lamina.verifiers import metrics
from lamina.verifiers.train import Samples, held_out_questions

Judge = Callable[[str], Awaitable[bool]]  # is this full answer text right?


def step_ends(tokenizer, completion: list[int], max_steps: int = 8) -> list[int]:
    """Token counts (exclusive ends, increasing) of the completion's steps: a step ends after a token whose text
    holds a newline, and at the last token. More than `max_steps` steps keep the first max_steps - 1 and the last.
    [] for an empty completion."""
    if not completion:
        return []
    ends = [i + 1 for i, t in enumerate(completion[:-1]) if "\n" in tokenizer.decode([t])
            and tokenizer.decode(completion[i + 1:]).strip()]  # a newline before only whitespace is no step
    ends.append(len(completion))
    return ends if len(ends) <= max_steps else ends[:max_steps - 1] + ends[-1:]


async def rollout_rates(engine, prompt: list[int], completion: list[int], ends: list[int], k: int, judge: Judge,
                        final_label: float, *, temperature: float = 0.8, max_tokens: int = 64,
                        seed: int = 0) -> list[float]:
    """[len(ends)] the fraction of `k` continuations of prompt + completion[:end] (an AsyncEngine's samples, seeded
    by seed and the step) that `judge` calls right, per step end; the complete answer (end = len(completion)) is
    labelled `final_label` without rollouts. `max_tokens` bounds the whole answer (prefix + continuation)."""
    from lamina.engine.sampling_params import SamplingParams

    tok = engine.tokenizer
    rates: list[float] = []
    for j, end in enumerate(ends):
        if end >= len(completion):
            rates.append(final_label)
            continue
        params = SamplingParams(n=k, temperature=temperature, max_tokens=max(1, max_tokens - end), seed=seed + j)
        final = None
        async for out in engine.generate(prompt + completion[:end], params):
            final = out
        assert final is not None
        verdicts = await asyncio.gather(*(judge(tok.decode(completion[:end] + list(o.token_ids)))
                                          for o in final.outputs))
        rates.append(sum(verdicts) / k)
    return rates


@dataclass(slots=True)
class StepRows:
    """One row per step of every sample: its question, sample index, soft label and features."""

    question_ids: list[str] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    features: list[list[float]] = field(default_factory=list)


async def collect_steps(engine, llm_engine, drawn: Samples, prompt_lengths: list[int], judges: dict[str, Judge],
                        k: int, layers: list[int], *, max_steps: int, temperature: float, max_tokens: int,
                        seed: int, concurrency: int = 4) -> StepRows:
    """Rollout-labelled step rows of every sample in `drawn` (judges: per question id)."""
    rows = StepRows()
    slots = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(drawn.labels), desc=f"rollouts x{k}", unit="sample", leave=False)

    async def one(i: int):
        async with slots:
            sequence, plen = drawn.sequences[i], prompt_lengths[i]
            ends = step_ends(engine.tokenizer, sequence[plen:], max_steps)
            rates = await rollout_rates(engine, sequence[:plen], sequence[plen:], ends, k,
                                        judges[drawn.question_ids[i]], float(drawn.labels[i]),
                                        temperature=temperature, max_tokens=max_tokens, seed=seed + 1000 * i)
            feats = (await asyncio.to_thread(step_features, llm_engine, sequence, [plen + e for e in ends], layers)
                     if ends else [])
            bar.update(1)
            return rates, feats

    try:
        results = await asyncio.gather(*(one(i) for i in range(len(drawn.labels))))
    finally:
        bar.close()
    for i, (rates, feats) in enumerate(results):
        rows.question_ids += [drawn.question_ids[i]] * len(rates)
        rows.sample_ids += [i] * len(rates)
        rows.labels += rates
        rows.features += feats
    return rows


def fit_prm(rows: StepRows, drawn: Samples, info: VerifierInfo, holdout: float,
            probe_kind: str = "logistic") -> ProcessVerifier:
    """Train on the questions outside a held-out fraction. Held-out metrics: the Brier score of the step scores
    against the rollout rates, the step AUROC against rate >= 0.5, and the outcome metrics (auroc, ece,
    selection_accuracy, ...) of each sample's last-step score against its own label."""
    from lamina.verifiers.train import report

    held = held_out_questions(rows.question_ids, holdout, info.seed)
    train = [i for i, q in enumerate(rows.question_ids) if q not in held]
    probe = train_probe([rows.features[i] for i in train], [rows.labels[i] for i in train], info.seed,
                        kind=probe_kind)
    test = [i for i, q in enumerate(rows.question_ids) if q in held]
    if test:
        scores = probe.predict([rows.features[i] for i in test])
        labels = [rows.labels[i] for i in test]
        last: dict[int, float] = {}
        for i, score in zip(test, scores):
            last[rows.sample_ids[i]] = score  # steps come in order: the last one stays
        samples = sorted(last)
        info.metrics = report([drawn.question_ids[s] for s in samples], [drawn.labels[s] for s in samples],
                              [last[s] for s in samples])
        brier = sum((s - y) ** 2 for s, y in zip(scores, labels)) / len(test)
        info.metrics |= {"steps": len(test), "step_brier": brier,
                         "step_auroc": metrics.auroc(scores, [int(y >= 0.5) for y in labels]),
                         "held_out_fraction": holdout}
    info.questions = len({rows.question_ids[i] for i in train})
    info.samples = len(train)
    return ProcessVerifier(probe, info)


async def train_process_verifier(model: str, task, split: str, samples: int, limit: int | None = None, *,
                                 rollouts: int = 4, seed: int = 0, temperature: float = 0.8,
                                 layers: list[int] | None = None, holdout: float = 0.25, max_tokens: int | None = None,
                                 max_steps: int = 8, engine: dict[str, Any] | None = None,
                                 probe: str = "logistic") -> ProcessVerifier:
    """Sample `task`'s split, label every step of every sample by `rollouts` continuations, train a ProcessVerifier
    (info.samples counts the training steps). ValueError when the rollouts never (or always) succeed."""
    from lamina.backends.local import shared_engine
    from lamina.eval.scorers import Scorer
    from lamina.rewards.learned import cached_identity, prompt_ids
    from lamina.verifiers.train import default_layers, sample_task

    options = engine or {"kv_cache_memory_gb": 0.25}
    drawn, llm_engine = await sample_task(model, task, split, samples, limit, seed=seed, temperature=temperature,
                                          max_tokens=max_tokens, engine=options)
    async_engine = await asyncio.to_thread(shared_engine, model, **options)
    scorer = Scorer.from_spec(task.scorer)
    scorer.prepare()
    examples = {e.id: e for e in task.examples(split, limit)}
    queries = {q: task.messages(e) for q, e in examples.items()}
    prompt_lengths = [len(prompt_ids(llm_engine.tokenizer, queries[q])) for q in drawn.question_ids]

    def judge_of(example, query: str) -> Judge:
        async def judge(text: str) -> bool:
            return (await scorer.score(text, example, query)).value >= 0.5
        return judge

    judges = {q: judge_of(e, queries[q][-1]["content"]) for q, e in examples.items()}
    chosen = layers or default_layers(len(llm_engine.model.layers))
    rows = await collect_steps(async_engine, llm_engine, drawn, prompt_lengths, judges, rollouts, chosen,
                               max_steps=max_steps, temperature=temperature,
                               max_tokens=max_tokens or task.spec.max_tokens, seed=seed)
    info = VerifierInfo(model, cached_identity(model), chosen, task.name, split, seed=seed, kind="prm",
                        rollouts=rollouts)
    return fit_prm(rows, drawn, info, holdout, probe)


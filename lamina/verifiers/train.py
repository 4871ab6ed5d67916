"""Collect labelled samples with their hidden states, train a probe verifier, evaluate one."""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from lamina.rewards.learned import (LearnedVerifier, ProcessVerifier, Probe, VerifierInfo, features_of, prompt_ids,
                                    train_probe)
from lamina.verifiers import metrics


@dataclass(slots=True)
class Samples:
    """N samples per question of a task split: row i is sample i, with its question, 0/1 label and token ids."""

    question_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sequences: list[list[int]] = field(default_factory=list)  # prompt + completion token ids
    texts: list[str] = field(default_factory=list)

    def rows(self, questions: set[str]) -> list[int]:
        return [i for i, q in enumerate(self.question_ids) if q in questions]


async def sample_task(model: str, task, split: str, samples: int, limit: int | None = None, *, seed: int = 0,
                      temperature: float = 0.8, max_tokens: int | None = None, concurrency: int = 4,
                      engine: dict[str, Any] | None = None) -> tuple[Samples, Any]:
    """Sample every question of `task`'s split `samples` times on the local `model` and label each sample with the
    task's scorer. Returns the samples and the LLMEngine that drew them (for its hidden states)."""
    from lamina.architecture import Architecture
    from lamina.eval.scorers import Scorer

    params = {"temperature": temperature, "max_tokens": max_tokens or task.spec.max_tokens}
    spec = {"name": "verifier-samples", "seed": seed,
            "models": {"m": {"model": model, "engine": engine or {"kv_cache_memory_gb": 0.25}, "params": params}},
            "layers": [[{"type": "generate", "samples": samples}]]}
    arch = Architecture.from_spec(spec, f"verifier samples of {model!r}", cache=False)
    scorer = Scorer.from_spec(task.scorer)
    scorer.prepare()
    examples = task.examples(split, limit)
    slots = asyncio.Semaphore(max(1, concurrency))
    llm_engine = (await arch.models["m"].backend.engine()).engine
    prompt = {}

    bar = tqdm(total=len(examples), desc=f"{task.name} {split} x{samples}", unit="q", leave=False)

    async def one(example):
        async with slots:
            messages = task.messages(example)
            result = await arch.run(messages)
            cands = result.first_layer_samples()
            scored = await asyncio.gather(*(scorer.score(c.text, example, messages[-1]["content"]) for c in cands))
            prompt[example.id] = prompt_ids(llm_engine.tokenizer, messages)
            bar.update(1)
            return example.id, cands, [int(s.value >= 0.5) for s in scored]

    try:
        results = await asyncio.gather(*(one(e) for e in examples))
    finally:
        bar.close()
        await arch.aclose()
    out = Samples()
    for qid, cands, labels in results:
        for cand, label in zip(cands, labels):
            out.question_ids.append(qid)
            out.labels.append(label)
            out.sequences.append(prompt[qid] + list(cand.token_ids or []))
            out.texts.append(cand.text)
    return out, llm_engine


def grow_train(task, size: int) -> None:
    """A generated task drawing `size` train questions (its dev and test stay the same questions); SpecError for
    another task or a size below 1."""
    from lamina.errors import SpecError
    from lamina.tasks.generated import DEFAULT_SIZES

    source = task.spec.source
    if source.type != "generated" or size < 1:
        raise SpecError(f"--train-size needs a generated task and a positive size (task {task.name!r} is "
                        f"{source.type}, size {size})")
    source.sizes = {**DEFAULT_SIZES, **(source.sizes or {}), "train": size}


def default_layers(num_layers: int) -> list[int]:
    """The middle and the last layer (transformers' indexing)."""
    return [num_layers // 2, num_layers]


def held_out_questions(question_ids: list[str], fraction: float, seed: int) -> set[str]:
    unique = sorted(set(question_ids))
    random.Random(seed).shuffle(unique)
    return set(unique[: max(1, round(len(unique) * fraction))]) if fraction > 0 else set()


def report(question_ids: list[str], labels: list[int], scores: list[float]) -> dict[str, Any]:
    """The verifier metrics of scored samples, with the selection-free references beside them."""
    return {"samples": len(labels), "questions": len(set(question_ids)),
            "auroc": metrics.auroc(scores, labels), "ece": metrics.ece(scores, labels),
            "selection_accuracy": metrics.selection_accuracy(question_ids, scores, labels),
            "first_sample_accuracy": metrics.first_sample_accuracy(question_ids, labels),
            "coverage": metrics.coverage(question_ids, labels)}


def fit(samples: Samples, features: list[list[float]], info: VerifierInfo, holdout: float,
        probe_kind: str = "logistic") -> LearnedVerifier:
    """Train a `probe_kind` probe on the questions outside a held-out fraction; the held-out metrics go into
    `info.metrics`."""
    held = held_out_questions(samples.question_ids, holdout, info.seed)
    train = samples.rows(set(samples.question_ids) - held)
    probe: Probe = train_probe([features[i] for i in train], [samples.labels[i] for i in train], info.seed,
                               kind=probe_kind)
    test = samples.rows(held)
    if test:
        scores = probe.predict([features[i] for i in test])
        info.metrics = report([samples.question_ids[i] for i in test], [samples.labels[i] for i in test], scores)
        info.metrics["held_out_fraction"] = holdout
    info.questions = len({samples.question_ids[i] for i in train})
    info.samples = len(train)
    return LearnedVerifier(probe, info)


async def train_verifier(model: str, task, split: str, samples: int, limit: int | None = None, *, seed: int = 0,
                         temperature: float = 0.8, layers: list[int] | None = None, holdout: float = 0.25,
                         max_tokens: int | None = None, engine: dict[str, Any] | None = None,
                         probes: tuple[str, ...] = ("logistic",)) -> list[LearnedVerifier]:
    """Sample, label and collect the states of `task`'s split once (engine: the local engine's options, e.g.
    num_threads), then train one verifier per probe kind in `probes` on them, in that order."""
    from lamina.rewards.learned import cached_identity

    drawn, llm_engine = await sample_task(model, task, split, samples, limit, seed=seed, temperature=temperature,
                                          max_tokens=max_tokens, engine=engine)
    chosen = layers or default_layers(len(llm_engine.model.layers))
    features = await asyncio.to_thread(features_of, llm_engine, drawn.sequences, chosen)
    return [fit(drawn, features, VerifierInfo(model, cached_identity(model), chosen, task.name, split, seed=seed),
                holdout, kind) for kind in probes]


async def evaluate_verifier(verifier: LearnedVerifier | ProcessVerifier, model: str, task, split: str, samples: int,
                            limit: int | None = None, *, seed: int = 0, temperature: float = 0.8,
                            max_tokens: int | None = None) -> dict[str, Any]:
    verifier.bind(None, model)  # refuse another model before sampling anything
    drawn, engine = await sample_task(model, task, split, samples, limit, seed=seed, temperature=temperature,
                                      max_tokens=max_tokens)
    scores = await asyncio.to_thread(verifier.bind(engine, model).score_sequences, drawn.sequences)
    return report(drawn.question_ids, drawn.labels, scores)

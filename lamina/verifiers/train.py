"""Collect labelled samples with their hidden states, train a probe verifier, evaluate one."""
from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lamina.rewards.learned import (LearnedVerifier, ProcessVerifier, Probe, VerifierInfo, assemble, feature_blocks,
                                    features_of, prompt_ids, train_probe)
from lamina.verifiers import metrics


@dataclass(slots=True)
class Samples:
    """N samples per question of a task split: row i is sample i, with its question, 0/1 label and token ids."""

    question_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sequences: list[list[int]] = field(default_factory=list)  # prompt + completion token ids
    texts: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # prompt tokens of each sequence (its answer starts there)

    def rows(self, questions: set[str]) -> list[int]:
        return [i for i, q in enumerate(self.question_ids) if q in questions]

    def save(self, path: str | Path) -> None:
        """One JSON file (token ids, labels, texts), for training again without sampling again."""
        Path(path).write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Samples":
        """ValueError naming the file when it is not a saved Samples."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            out = cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a saved set of verifier samples: {exc}") from None
        if len({len(out.question_ids), len(out.labels), len(out.sequences), len(out.starts)}) != 1:
            raise ValueError(f"{path}: question_ids, labels, sequences and starts differ in length")
        return out


TECHNIQUES = ("generate", "program")  # what a verifier's samples are: answers, or programs judged by what they print


async def sample_task(model: str, task, split: str, samples: int, limit: int | None = None, *, seed: int = 0,
                      temperature: float = 0.8, max_tokens: int | None = None, concurrency: int = 4,
                      engine: dict[str, Any] | None = None, technique: str = "generate",
                      skip: int = 0) -> tuple[Samples, Any]:
    """Sample every question of `task`'s split `samples` times on the local `model` and label each sample with the
    task's scorer. Returns the samples and the LLMEngine that drew them (for its hidden states). skip: leave out the
    split's first `skip` questions (the ones a smaller draw already holds: `collect`'s grow_from); a question's
    samples are seeded by its own messages, so they do not depend on which questions are drawn with it.
    technique: "generate" samples answers; "program" samples programs with the `program` technique's default prompt
    and labels each by what it printed in the sandbox, while its sequence is the question's prompt + the PROGRAM's
    tokens (what a verifier reads when it scores program candidates in an architecture). ValueError for another."""
    from lamina.architecture import Architecture
    from lamina.eval.scorers import Scorer
    from lamina.techniques.program import PROGRAM_MIN_TOKENS

    if technique not in TECHNIQUES:
        raise ValueError(f"technique {technique!r}: one of {', '.join(TECHNIQUES)}")
    tokens = max_tokens or (task.spec.max_tokens if technique == "generate"
                            else max(task.spec.max_tokens, PROGRAM_MIN_TOKENS))
    params = {"temperature": temperature, "max_tokens": tokens}
    spec = {"name": "verifier-samples", "seed": seed,
            "models": {"m": {"model": model, "engine": engine or {"kv_cache_memory_gb": 0.25}, "params": params}},
            "layers": [[{"type": technique, "samples": samples}]]}
    arch = Architecture.from_spec(spec, f"verifier samples of {model!r}", cache=False)
    scorer = Scorer.from_spec(task.scorer)
    scorer.prepare()
    examples = task.examples(split, limit)[skip:]
    slots = asyncio.Semaphore(max(1, concurrency))
    llm_engine = (await arch.models["m"].backend.engine()).engine
    prompt = {}

    bar = tqdm(total=len(examples), desc=f"{task.name} {split} x{samples}{' programs' * (technique == 'program')}",
               unit="q", leave=False)

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
            out.starts.append(len(prompt[qid]))
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
        probe_kind: str = "logistic", reg: float | None = None) -> LearnedVerifier:
    """Train a `probe_kind` probe on the questions outside a held-out fraction; the held-out metrics go into
    `info.metrics`. `reg`: the logistic's C or the MLP's alpha (None: train_probe's defaults)."""
    held = held_out_questions(samples.question_ids, holdout, info.seed)
    train = samples.rows(set(samples.question_ids) - held)
    strength = {} if reg is None else ({"c": reg} if probe_kind == "logistic" else {"alpha": reg})
    probe: Probe = train_probe([features[i] for i in train], [samples.labels[i] for i in train], info.seed,
                               kind=probe_kind, **strength)
    test = samples.rows(held)
    if test:
        scores = probe.predict([features[i] for i in test])
        info.metrics = report([samples.question_ids[i] for i in test], [samples.labels[i] for i in test], scores)
        info.metrics["held_out_fraction"] = holdout
    info.questions = len({samples.question_ids[i] for i in train})
    info.samples = len(train)
    return LearnedVerifier(probe, info)


# ---- features chosen by cross-validation on the training questions ----

C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0)  # logistic: inverse L2 strength
ALPHA_GRID = (0.01, 1.0, 10.0)  # MLP: L2 strength
CV_FOLDS = 4


def quartile_layers(num_layers: int) -> list[int]:
    return sorted({num_layers // 4, num_layers // 2, 3 * num_layers // 4, num_layers})


def feature_configs(num_layers: int) -> list[tuple[list[int], list[str]]]:
    """The (layers, pooling) feature sets cross-validation chooses among: the middle and last layer's last-token
    states (the plain probe) alone, with the answer's token statistics, with its mean-pooled states too; and the same
    at the four quartile layers."""
    mid, quart = default_layers(num_layers), quartile_layers(num_layers)
    return [(mid, ["last"]), (mid, ["last", "logprob"]), (mid, ["last", "mean", "logprob"]),
            (quart, ["last", "logprob"]), (quart, ["last", "mean", "logprob"])]


def question_folds(question_ids: list[str], folds: int, seed: int) -> list[int]:
    """Per row, its fold in 0..folds-1; every row of a question in one fold (questions shuffled by `seed`)."""
    unique = sorted(set(question_ids))
    random.Random(seed).shuffle(unique)
    fold = {q: i % folds for i, q in enumerate(unique)}
    return [fold[q] for q in question_ids]


def cross_validate(x, labels: list[int], question_ids: list[str], kind: str, reg: float, seed: int,
                   folds: int = CV_FOLDS, extra: tuple[Any, list[int]] | None = None) -> dict[str, float | None]:
    """Mean over question-grouped folds of the AUROC and best-of-N selection accuracy of a probe trained on the other
    folds (folds whose training part or scored part lacks a right or a wrong sample are skipped; None if all are).
    `extra` (features, labels): rows added to every fold's training part, never scored."""
    import numpy as np

    x, y = np.asarray(x), np.asarray(labels)
    more_x, more_y = (np.asarray(extra[0]), np.asarray(extra[1])) if extra else (x[:0], y[:0])
    fold_of = np.asarray(question_folds(question_ids, folds, seed))
    aurocs, selections = [], []
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        train_y = np.concatenate([y[train], more_y])
        if len(set(train_y)) < 2 or len(set(y[test])) < 2:
            continue
        strength = {"c": reg} if kind == "logistic" else {"alpha": reg}
        scores = train_probe(np.concatenate([x[train], more_x]), train_y, seed, kind=kind, **strength).predict(x[test])
        qids = [q for q, t in zip(question_ids, test) if t]
        aurocs.append(metrics.auroc(scores, y[test].tolist()))
        selections.append(metrics.selection_accuracy(qids, scores, y[test].tolist()))
    mean = (lambda v: sum(v) / len(v) if v else None)
    return {"auroc": mean([a for a in aurocs if a is not None]), "selection_accuracy": mean(selections)}


Extra = tuple[Samples, dict]  # another task's training samples and their feature blocks (same layers)


def select_features(samples: Samples, blocks: dict, block_layers: list[int], rows: list[int], kind: str, seed: int,
                    configs: list[tuple[list[int], list[str]]], grid: tuple[float, ...] | None = None,
                    extra: Extra | None = None) -> tuple[tuple[list[int], list[str]], float, list[dict]]:
    """The (layers, pooling) and regularisation of the best question-grouped cross-validated AUROC on the training
    `rows` only (with `extra`'s rows in every fold's training part); returns them and every candidate's CV results.
    ValueError when no fold can be scored."""
    grid = grid or (C_GRID if kind == "logistic" else ALPHA_GRID)
    labels = [samples.labels[i] for i in rows]
    qids = [samples.question_ids[i] for i in rows]
    tried = []
    for layers, pooling in configs:
        x = assemble(blocks, block_layers, layers, pooling)[rows]
        more = (assemble(extra[1], block_layers, layers, pooling), extra[0].labels) if extra else None
        for reg in grid:
            tried.append({"layers": layers, "pooling": pooling, "reg": reg,
                          **cross_validate(x, labels, qids, kind, reg, seed, extra=more)})
    scored = [t for t in tried if t["auroc"] is not None]
    if not scored:
        raise ValueError("cross-validation needs right and wrong samples in several folds of questions")
    best = max(scored, key=lambda t: (t["auroc"], t["selection_accuracy"] or 0.0))
    return (best["layers"], best["pooling"]), best["reg"], tried


def fit_selected(samples: Samples, blocks: dict, block_layers: list[int], info: VerifierInfo, holdout: float,
                 kind: str = "logistic", configs: list[tuple[list[int], list[str]]] | None = None,
                 grid: tuple[float, ...] | None = None, extra: Extra | None = None) -> LearnedVerifier:
    """A verifier whose features (layers, pooling) and regularisation are chosen by cross-validation on the questions
    outside the held-out fraction (never on the held-out ones, which only give info.metrics); `configs` default:
    feature_configs. `extra`: another task's training samples (e.g. a sibling generated family's train split),
    added to every fit, never held out or scored. info.layers and info.pooling are set to the choice;
    info.questions and info.samples count everything fitted; info.metrics["cv"] holds every candidate."""
    import numpy as np

    held = held_out_questions(samples.question_ids, holdout, info.seed)
    rows = samples.rows(set(samples.question_ids) - held)
    configs = configs or feature_configs(max(block_layers))
    (layers, pooling), reg, tried = select_features(samples, blocks, block_layers, rows, kind, info.seed, configs, grid,
                                                    extra)
    info.layers, info.pooling = list(layers), list(pooling)
    x = assemble(blocks, block_layers, layers, pooling)
    more_x = assemble(extra[1], block_layers, layers, pooling) if extra else x[:0]
    more_y = extra[0].labels if extra else []
    strength = {"c": reg} if kind == "logistic" else {"alpha": reg}
    probe = train_probe(np.concatenate([x[rows], more_x]), [samples.labels[i] for i in rows] + list(more_y),
                        info.seed, kind=kind, **strength)
    test = samples.rows(held)
    if test:
        info.metrics = report([samples.question_ids[i] for i in test], [samples.labels[i] for i in test],
                              probe.predict(x[test]))
        info.metrics["held_out_fraction"] = holdout
    info.questions = len({samples.question_ids[i] for i in rows}) + (len(set(extra[0].question_ids)) if extra else 0)
    info.samples = len(rows) + len(more_y)
    info.metrics["cv"] = {"folds": CV_FOLDS, "chosen": {"layers": layers, "pooling": pooling, "reg": reg},
                          "tried": tried}
    if extra:
        info.metrics["extra_questions"] = len(set(extra[0].question_ids))
    return LearnedVerifier(probe, info)


def collected_layers(num_layers: int) -> list[int]:
    """Every layer some feature config reads."""
    return sorted({layer for layers, _ in feature_configs(num_layers) for layer in layers})


async def collect(model: str, task, split: str, samples: int, limit: int | None = None, *, seed: int = 0,
                  temperature: float = 0.8, max_tokens: int | None = None, engine: dict[str, Any] | None = None,
                  cache: str | Path | None = None, technique: str = "generate",
                  grow_from: str | Path | None = None) -> tuple[Samples, dict, list[int]]:
    """Labelled samples of a split and their feature blocks (feature_blocks at collected_layers). With `cache` (a
    path stem), samples are kept in STEM.samples.json and blocks in STEM.features.npz, and read back from there
    instead of sampling (or computing states) again; blocks only with the samples they were computed from (samples
    drawn again get their states computed again, even when as many).
    grow_from: the cache stem of a SMALLER draw of the same split (same samples per question, seed, temperature and
    technique; a generated task's larger train split starts with its smaller one): when there is nothing at `cache`
    yet, its samples (and its blocks, when they match them) are kept and only the questions after them are drawn
    and read. ValueError naming the file when its questions are not this split's leading questions (their prompts
    differ) or it holds more questions than the split."""
    from lamina.backends.local import shared_engine

    samples_path = Path(f"{cache}.samples.json") if cache else None
    blocks_path = Path(f"{cache}.features.npz") if cache else None
    base_path = Path(f"{grow_from}.samples.json") if grow_from else None
    base_blocks = None
    if samples_path and samples_path.exists():
        drawn = Samples.load(samples_path)
        llm_engine = None
    elif base_path and base_path.exists():
        base = Samples.load(base_path)
        done = list(dict.fromkeys(base.question_ids))
        llm_engine = (await asyncio.to_thread(shared_engine, model,
                                              **(engine or {"kv_cache_memory_gb": 0.25}))).engine
        check_leading(base, done, task, split, limit, llm_engine.tokenizer, base_path)  # before anything is drawn
        new, llm_engine = await sample_task(model, task, split, samples, limit, seed=seed, temperature=temperature,
                                            max_tokens=max_tokens, engine=engine, technique=technique,
                                            skip=len(done))
        drawn = merge_samples((base, {}), (new, {}))[0]
        if Path(f"{grow_from}.features.npz").exists():
            blocks, layers, _ = load_blocks(f"{grow_from}.features.npz")
            if len(blocks["last"]) == len(base.labels) and layers == collected_layers(len(llm_engine.model.layers)):
                base_blocks = (blocks, len(base.labels))
        if samples_path:
            samples_path.parent.mkdir(parents=True, exist_ok=True)
            drawn.save(samples_path)
    else:
        drawn, llm_engine = await sample_task(model, task, split, samples, limit, seed=seed, temperature=temperature,
                                              max_tokens=max_tokens, engine=engine, technique=technique)
        if samples_path:
            samples_path.parent.mkdir(parents=True, exist_ok=True)
            drawn.save(samples_path)
    if blocks_path and blocks_path.exists() and llm_engine is None:  # states of freshly drawn samples are computed
        blocks, layers, _ = load_blocks(blocks_path)
        if len(blocks["last"]) == len(drawn.labels):
            return drawn, blocks, layers
    if llm_engine is None:
        llm_engine = (await asyncio.to_thread(shared_engine, model, **(engine or {"kv_cache_memory_gb": 0.25}))).engine
    layers = collected_layers(len(llm_engine.model.layers))
    if base_blocks:  # only the new questions' states are computed
        import numpy as np

        kept, rows = base_blocks
        new_blocks = await asyncio.to_thread(feature_blocks, llm_engine, drawn.sequences[rows:], drawn.starts[rows:],
                                             layers)
        blocks = {k: np.concatenate([kept[k], new_blocks[k]]) if new_blocks else kept[k] for k in kept}
    else:
        blocks = await asyncio.to_thread(feature_blocks, llm_engine, drawn.sequences, drawn.starts, layers)
    if blocks_path:
        save_blocks(blocks_path, blocks, layers)
    return drawn, blocks, layers


def check_leading(base: Samples, done: list[str], task, split: str, limit: int | None, tokenizer,
                  path: Path) -> None:
    """ValueError naming `path` unless its questions `done` are the split's first questions, each with the prompt
    its samples were drawn from (`collect`'s grow_from)."""
    examples = task.examples(split, limit)
    if len(done) > len(examples):
        raise ValueError(f"{path}: holds {len(done)} questions, more than the {len(examples)} of {task.name}'s "
                         f"{split} split asked for; it cannot be grown into this draw")
    first = {q: i for i, q in reversed(list(enumerate(base.question_ids)))}
    for qid, example in zip(done, examples):
        i = first[qid]
        if qid != example.id or base.sequences[i][:base.starts[i]] != prompt_ids(tokenizer, task.messages(example)):
            raise ValueError(f"{path}: question {qid!r} is not {task.name}'s {split} question {example.id!r} with "
                             f"the same prompt; it cannot be grown into this draw (draw it again without it)")


def save_blocks(path: str | Path, blocks: dict, layers: list[int], seconds: float = 0.0) -> None:
    """Feature blocks (feature_blocks' dict, at `layers`) in one .npz file, with the seconds computing them took."""
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, layers=np.asarray(layers), seconds=np.asarray(seconds), **blocks)


def load_blocks(path: str | Path) -> tuple[dict, list[int], float]:
    """The blocks, layers and seconds `save_blocks` kept (seconds 0.0 in a file written before they were kept)."""
    import numpy as np

    with np.load(path) as data:
        return ({k: data[k] for k in ("last", "mean", "logprob")}, data["layers"].tolist(),
                float(data["seconds"]) if "seconds" in data else 0.0)


async def train_verifier(model: str, task, split: str, samples: int, limit: int | None = None, *, seed: int = 0,
                         temperature: float = 0.8, layers: list[int] | None = None, holdout: float = 0.25,
                         max_tokens: int | None = None, engine: dict[str, Any] | None = None,
                         probes: tuple[str, ...] = ("logistic",), select: bool = True,
                         cache: str | Path | None = None,
                         extra: list[tuple[Any, str | Path | None]] | None = None,
                         technique: str = "generate",
                         grow_from: str | Path | None = None) -> list[LearnedVerifier]:
    """Sample, label and collect the states of `task`'s split once (engine: the local engine's options, e.g.
    num_threads; cache: see `collect`), then train one verifier per probe kind in `probes` on them, in that order.
    select: features and regularisation chosen by cross-validation on the training questions (`fit_selected`; with
    `layers`, only the regularisation, on those layers' last-token states); else the plain probe (the last-token
    states of `layers`, default the middle and the last, and train_probe's default strength). extra: (task, cache)
    pairs whose `split` is sampled the same way and added to every fit (`fit_selected`), never held out or scored.
    technique: see `sample_task` ("program": a verifier of sampled programs; kept in its info). grow_from: a
    smaller cached draw of the same split that this one extends (see `collect`)."""
    from lamina.rewards.learned import cached_identity

    if not select:
        drawn, llm_engine = await sample_task(model, task, split, samples, limit, seed=seed, temperature=temperature,
                                              max_tokens=max_tokens, engine=engine, technique=technique)
        chosen = layers or default_layers(len(llm_engine.model.layers))
        features = await asyncio.to_thread(features_of, llm_engine, drawn.sequences, chosen)
        return [fit(drawn, features, VerifierInfo(model, cached_identity(model), chosen, task.name, split, seed=seed,
                                                  technique=technique), holdout, kind) for kind in probes]
    drawn, blocks, block_layers = await collect(model, task, split, samples, limit, seed=seed,
                                                temperature=temperature, max_tokens=max_tokens, engine=engine,
                                                cache=cache, technique=technique, grow_from=grow_from)
    if layers:
        missing = [layer for layer in layers if layer not in block_layers]
        if missing:  # states of other layers: collect them too
            from lamina.backends.local import shared_engine

            llm_engine = (await asyncio.to_thread(shared_engine, model,
                                                  **(engine or {"kv_cache_memory_gb": 0.25}))).engine
            block_layers = sorted(set(block_layers) | set(layers))
            blocks = await asyncio.to_thread(feature_blocks, llm_engine, drawn.sequences, drawn.starts, block_layers)
    more: Extra | None = None
    for other, other_cache in extra or []:
        other_drawn, other_blocks, other_layers = await collect(model, other, split, samples, None, seed=seed,
                                                                temperature=temperature, max_tokens=max_tokens,
                                                                engine=engine, cache=other_cache, technique=technique)
        if other_layers != block_layers:
            raise ValueError(f"extra task {other.name}: states of layers {other_layers}, not {block_layers}")
        more = merge_samples(more, (other_drawn, other_blocks))
    configs = [(list(layers), ["last"])] if layers else None
    out = [await asyncio.to_thread(fit_selected, drawn, blocks, block_layers,
                                   VerifierInfo(model, cached_identity(model), [], task.name, split, seed=seed,
                                                technique=technique),
                                   holdout, kind, configs, None, more) for kind in probes]
    for verifier in out:
        if extra:
            verifier.info.metrics["extra_tasks"] = [other.name for other, _ in extra]
    return out


def merge_samples(a: Extra | None, b: Extra) -> Extra:
    """Two (samples, feature blocks) pairs as one, rows of `a` first."""
    import numpy as np

    if a is None:
        return b
    merged = Samples(*(getattr(a[0], f) + getattr(b[0], f) for f in ("question_ids", "labels", "sequences", "texts",
                                                                     "starts")))
    return merged, {k: np.concatenate([a[1][k], b[1][k]]) for k in a[1]}


async def evaluate_verifier(verifier: LearnedVerifier | ProcessVerifier, model: str, task, split: str, samples: int,
                            limit: int | None = None, *, seed: int = 0, temperature: float = 0.8,
                            max_tokens: int | None = None) -> dict[str, Any]:
    """Held-out metrics (`report`) of `verifier` on samples of `task`'s split drawn the way it was trained (answers,
    or programs for a verifier of programs)."""
    verifier.bind(None, model)  # refuse another model before sampling anything
    drawn, engine = await sample_task(model, task, split, samples, limit, seed=seed, temperature=temperature,
                                      max_tokens=max_tokens, technique=verifier.info.technique)
    scores = await asyncio.to_thread(verifier.bind(engine, model).score_sequences, drawn.sequences,
                                     drawn.starts)
    return report(drawn.question_ids, drawn.labels, scores)

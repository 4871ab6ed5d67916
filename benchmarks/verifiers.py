"""Verifiers at small scale: which selector turns 8 samples of the embedded model into more right answers.

Per task, on its TEST split (95% Wilson intervals): greedy; and, among the SAME 8 samples per question (drawn once,
one n=8 request with top-20 logprobs), majority@8, self-certainty best-of-8 and self-certainty-weighted vote,
mean-logprob best-of-8, the learned outcome verifier (ORM) best-of-8 and ORM-weighted vote, and coverage@8 (some
sample right: the ceiling of any selector); on code tasks, the samples EXECUTED in the sandbox on the prompt's own
examples (the task's public tests, never the hidden tests its scorer runs) and voted among those passing the most of
them (public_tests); program-aided vote (8 executed programs, arith/units tasks) is drawn separately. AUROC of each scorer over the pooled samples; tokens and seconds per example, the ORM's forward pass
over prompt + answer counted in its rows. Each task's ORM is trained on its train split (`--train-size` questions
of a generated task; `--train-with` adds sibling tasks' train splits), its features and L2 strength chosen by
cross-validation on those questions, and kept in the cache folder with the train samples and their feature blocks;
finished tasks are kept there too, so a rerun resumes, and so are the test split's draws (greedy, the samples,
the programs) with the samples' feature blocks, so an ORM trained again is scored on the same samples without drawing
them again. `--program-from` takes the program-aided rows from a previous
results JSON that drew the same test questions with the same program prompt; `--programs-only OLD.json` draws only
the program rows again and keeps OLD's other rows;
`--keep OLD.json` keeps OLD's results of the tasks not run now (e.g. one task redrawn with a larger train split).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/verifiers.py [--tasks arith-1,code-2] [--limit 20]
        [--train-size 100] [--train-with units-1=units-2] [--program-from OLD.json] [--programs-only OLD.json]
        [--keep OLD.json]
        [--samples 8] [--threads 1]
        [--markdown]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

if __package__ in (None, ""):  # run as a script (python benchmarks/...): the repository root is not on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.verifiers_report import (kept, plot, previous, same_draw, table, target_lines, targets,
                                       train_sizes)
from lamina.answers import extract
from lamina.architecture import Architecture
from lamina.eval.scorers import Scorer
from lamina.eval.stats import wilson_interval
from lamina.rewards.learned import LearnedVerifier
from lamina.techniques.program import PROGRAM_EXAMPLES, PROGRAM_MIN_TOKENS, PROGRAM_PROMPT
from lamina.verifiers import metrics
from lamina.verifiers.select import best_of, vote

TASKS = ["arith-1", "arith-3", "units-1", "units-2", "code-2", "code-3"]
PROGRAM_TASKS = ("arith-", "units-")
CONCURRENCY = 4  # questions in flight (the engine batches their samples)


@dataclass(slots=True)
class Drawn:
    """The samples of every question of one phase: per question its candidates' texts, vote keys, labels, scores."""

    texts: list[list[str]] = field(default_factory=list)
    keys: list[list[str | None]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    scores: dict[str, list[list[float | None]]] = field(default_factory=dict)
    sequences: list[list[list[int]]] = field(default_factory=list)  # prompt + sample token ids (for the ORM)
    starts: list[int] = field(default_factory=list)  # per question, its prompt's tokens (where each answer starts)
    tokens: int = 0  # prompt + completion tokens of the phase (cost, not counting cache hits)
    seconds: float = 0.0  # wall time of the phase

    def flat(self, name: str) -> list[float | None]:
        return [s for row in self.scores[name] for s in row]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Drawn":
        return cls(**json.loads(path.read_text()))


async def draw_cached(spec: dict, task, examples, scorer: Scorer, desc: str, path: Path) -> Drawn:
    """`draw`, kept in `path` (JSON): a rerun of the task reads the same samples back instead of drawing them again
    (their tokens and seconds are the ones measured when they were drawn)."""
    if path.exists():
        return Drawn.load(path)
    drawn, _ = await draw(spec, task, examples, scorer, desc)
    drawn.save(path)
    return drawn


def test_blocks(drawn: Drawn, path: Path, threads: int) -> tuple[dict, list[int], float]:
    """The feature blocks (lamina.rewards.learned.feature_blocks at every layer an ORM may read) of every sample of
    `drawn`, one forward pass over each question's prompt (once) and its answers; kept in `path` (.npz) with the
    seconds they took."""
    from lamina.backends.local import shared_engine
    from lamina.rewards.learned import feature_blocks
    from lamina.verifiers.train import collected_layers, load_blocks, save_blocks

    if path.exists():
        return load_blocks(path)
    engine = shared_engine("default", **engine_options(threads)).engine
    layers = collected_layers(len(engine.model.layers))
    flat_sequences = [s for seqs in drawn.sequences for s in seqs]
    flat_starts = [start for start, seqs in zip(drawn.starts, drawn.sequences) for _ in seqs]
    start = time.perf_counter()
    blocks = feature_blocks(engine, flat_sequences, flat_starts, layers)
    seconds = time.perf_counter() - start
    save_blocks(path, blocks, layers, seconds)
    return blocks, layers, seconds


def cpu_description() -> str:
    """The CPU model and its SIMD flags that matter to the kernels."""
    try:
        from lamina.engine.kernels import cpu_description as described  # type: ignore[attr-defined]

        return described().removeprefix("CPU: ")
    except ImportError:
        pass
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    flag_line = re.search(r"flags\s*:\s*(.*)", text)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model.group(1).strip() if model else 'unknown CPU'} ({' '.join(simd) or 'no AVX2'})"


def engine_options(threads: int) -> dict:
    return {"kv_cache_memory_gb": 0.25, "num_threads": threads}


def vote_extractor(scorer: Scorer) -> str:
    return "code" if scorer.kind == "code" else scorer.extract


async def draw(spec: dict, task, examples, scorer: Scorer, desc: str) -> tuple[Drawn, object]:
    """Run `spec` on every example; label each first-layer sample with the task's scorer. Returns the samples and
    the local LLMEngine that drew them."""
    from lamina.rewards.learned import prompt_ids

    arch = Architecture.from_spec(spec, f"benchmark {desc}", cache=False)
    engine = (await arch.models["m"].backend.engine()).engine
    slots = asyncio.Semaphore(CONCURRENCY)
    bar = tqdm(total=len(examples), desc=desc, unit="q", leave=False)
    per_question: list = [None] * len(examples)
    out = Drawn(scores={"self_certainty": [], "mean_logprob": []})
    start = time.perf_counter()

    async def one(i: int, example) -> None:
        async with slots:
            messages = task.messages(example)
            result = await arch.run(messages, tests=example.public_tests or None)
            cands = result.first_layer_samples()
            scored = await asyncio.gather(*(scorer.score(c.text, example, messages[-1]["content"]) for c in cands))
            prompt = prompt_ids(engine.tokenizer, messages)
            per_question[i] = (cands, [int(s.value >= 0.5) for s in scored], prompt)
            out.tokens += result.usage.total_tokens
            bar.update(1)
            bar.set_postfix(tok_s=f"{out.tokens / (time.perf_counter() - start):.0f}")

    try:
        await asyncio.gather(*(one(i, e) for i, e in enumerate(examples)))
    finally:
        bar.close()
        await arch.aclose()
    out.seconds = time.perf_counter() - start
    how = vote_extractor(scorer)
    for cands, labels, prompt in per_question:
        out.texts.append([c.text for c in cands])
        out.keys.append([extract(c.text, how) for c in cands])
        out.labels.append(labels)
        out.scores["self_certainty"].append([c.self_certainty for c in cands])
        out.scores["mean_logprob"].append([c.mean_logprob for c in cands])
        out.sequences.append([prompt + list(c.token_ids or []) for c in cands])
        out.starts.append(len(prompt))
    return out, engine


def model_spec(name: str, temperature: float, max_tokens: int, threads: int, seed: int, layer: list) -> dict:
    params = {"temperature": temperature, "max_tokens": max_tokens}
    return {"name": name, "seed": seed, "layers": [layer],
            "models": {"m": {"model": "default", "engine": engine_options(threads), "params": params}}}


def orm_name(probe: str) -> str:
    """The scorer name of an ORM with this probe: orm (logistic), orm_mlp."""
    return "orm" if probe == "logistic" else f"orm_{probe}"


async def train_orms(task, args, paths: dict[str, Path], train_size: int,
                     technique: str = "generate") -> dict[str, LearnedVerifier]:
    """Per probe kind, its ORM: loaded from its file, else trained (the missing ones from one sampling, kept in the
    cache folder with its feature blocks) and saved. Features and regularisation are chosen by cross-validation on
    the train split's questions (lamina.verifiers.train.fit_selected)."""
    from lamina.tasks.task import load_task
    from lamina.verifiers.train import grow_train, train_verifier

    missing = tuple(probe for probe, path in paths.items() if not path.exists())
    out = {probe: LearnedVerifier.load(path) for probe, path in paths.items() if probe not in missing}
    if missing:
        start = time.perf_counter()
        size = train_size if task.spec.source.type == "generated" else "all"
        extra = []
        for other_name in args.train_with.get(task.name, []):
            other = load_task(other_name)
            other_size = for_task(args.train_size, other_name)
            if other.spec.source.type == "generated":
                grow_train(other, other_size)
            extra.append((other, data_stem(args, other_name, other_size if other.spec.source.type == "generated"
                                           else "all")))
        suffix = "" if technique == "generate" else f"-{technique}-{program_tag()}"
        stem = Path(f"{data_stem(args, task.name, size)}{suffix}")
        trained = await train_verifier("default", task, "train", train_samples(args), seed=args.seed,
                                       probes=missing, temperature=args.temperature,
                                       engine=engine_options(args.threads), cache=stem, extra=extra, technique=technique,
                                       grow_from=smaller_draw(args, task.name, size, suffix))
        for probe, verifier in zip(missing, trained):
            verifier.info.metrics["train_seconds"] = time.perf_counter() - start  # sampling (or reading) shared
            paths[probe].parent.mkdir(parents=True, exist_ok=True)
            verifier.save(paths[probe])
            out[probe] = verifier
    return out


def train_samples(args) -> int:
    """Samples per TRAIN question of the verifiers (--train-samples; default --samples, as the test draws)."""
    return getattr(args, "train_samples", None) or args.samples


def data_stem(args, task: str, size) -> Path:
    """Where a task's train samples and their feature blocks are kept (STEM.samples.json, STEM.features.npz)."""
    return args.cache / f"{task}-train{size}-n{train_samples(args)}-seed{args.seed}-t{args.temperature}"


def smaller_draw(args, task: str, size, suffix: str = "") -> Path | None:
    """The stem of the largest cached train draw of `task` with fewer than `size` questions (same samples, seed,
    temperature and technique `suffix`), which a draw of `size` questions extends (collect's grow_from); None when
    there is none or `size` is not a number ("all")."""
    if not isinstance(size, int):
        return None
    names = {f"{data_stem(args, task, n).name}{suffix}.samples.json": n for n in range(1, size)}
    sizes = [names[path.name] for path in args.cache.glob(f"{task}-train*.samples.json") if path.name in names]
    return Path(f"{data_stem(args, task, max(sizes))}{suffix}") if sizes else None


def test_stem(args, task: str, limit: int | None) -> Path:
    """Where a task's test draws are kept: STEM.samples.json, STEM.greedy.json (Drawn), STEM.features.npz (the
    samples' feature blocks), STEM.program-TAG.json (programs)."""
    return args.cache / f"{task}-test-limit{limit or 'all'}-n{args.samples}-t{args.temperature}-seed{args.seed}"


def train_with(text: str | None) -> dict[str, list[str]]:
    """`--train-with units-1=units-2+units-3,units-2=units-1`: per task, the tasks whose train splits its ORM also
    fits. argparse error text on a bad value."""
    out: dict[str, list[str]] = {}
    for part in filter(None, (text or "").split(",")):
        task, sep, others = part.partition("=")
        if not sep or not task.strip() or not others.strip():
            raise argparse.ArgumentTypeError(f"--train-with: {part!r} is not TASK=OTHER[+OTHER...]")
        out[task.strip()] = [o.strip() for o in others.split("+") if o.strip()]
    return out


def program_tag() -> str:
    """A short hash of what the programs are drawn with (the program technique's default prompt and few-shot
    examples, their least max_tokens): in every cache name of a program draw or a verifier of programs, so a changed
    prompt never reads programs drawn with another."""
    import hashlib

    text = json.dumps([PROGRAM_PROMPT, [list(e) for e in PROGRAM_EXAMPLES], PROGRAM_MIN_TOKENS])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def reused_program_rows(path: Path | None, name: str, questions: int, args) -> dict[str, dict]:
    """The program_vote and program_coverage rows of `name` in a previous results JSON (`--program-from`), when it
    drew the same test questions with the same samples, temperature, seed and program prompt (the program run
    reads no verifier, so it need not be drawn again); {} otherwise."""
    if path is None:
        return {}
    record = json.loads(path.read_text())
    for task in record.get("tasks", []) if same_draw(record, args) else []:
        rows = {m: task["methods"][m] for m in ("program_vote", "program_coverage") if m in task["methods"]}
        if (task["task"] == name and task["questions"] == questions and rows
                and rows["program_vote"].get("program_prompt") == program_tag()):
            return {m: {**v, "reused_from": str(path)} for m, v in rows.items()}
    return {}


async def program_rows(name: str, task, examples, scorer: Scorer, args, stem: Path) -> dict[str, dict]:
    """Program-aided vote and program coverage: `args.samples` programs per question (the `program` technique's
    default prompt: PAL's few-shot turns), executed in the sandbox; kept in the cache folder beside the samples.
    With `--program-orm N`: also a learned verifier OF PROGRAMS (trained on N train questions' programs, labelled by
    what they print), best-of-8 among the programs that printed an answer (program_orm) and the vote weighted by its
    P(correct) (program_orm_vote), its forward pass counted in their cost."""
    program_layer = [{"type": "program", "samples": args.samples}]
    shots, tag = len(PROGRAM_EXAMPLES), program_tag()
    program = await draw_cached(model_spec("program", args.temperature, max(task.spec.max_tokens, PROGRAM_MIN_TOKENS),
                                           args.threads, args.seed, program_layer), task, examples, scorer,
                                f"{name} program", Path(f"{stem}.program-{tag}.json"))
    extra = {"program_examples": shots, "program_prompt": tag,
             "programs_answering": sum(k is not None for keys in program.keys for k in keys)
             / max(sum(len(keys) for keys in program.keys), 1)}
    rows = {"program_vote": {**row([labels[vote(keys)] if labels else 0 for keys, labels
                                    in zip(program.keys, program.labels)], program.tokens, program.seconds), **extra},
            "program_coverage": {**row([int(any(labels)) for labels in program.labels], program.tokens,
                                       program.seconds), **extra}}
    if args.program_orm:
        size = args.program_orm
        grow = task.spec.source.type == "generated"
        if grow:
            from lamina.verifiers.train import grow_train

            grow_train(task, size)
        path = args.cache / (f"{name}-program-{tag}-orm-train{size if grow else 'all'}-n{train_samples(args)}"
                             f"-t{args.temperature}-seed{args.seed}-cv.json")
        verifier = (await train_orms(task, argparse.Namespace(**{**vars(args), "train_with": {}}),
                                     {"logistic": path}, size, technique="program"))["logistic"]
        blocks, block_layers, seconds = await asyncio.to_thread(test_blocks, program,
                                                                Path(f"{stem}.program-{tag}.features.npz"),
                                                                args.threads)
        (scores, tokens, seconds), = (await asyncio.to_thread(score_orms, {"program_orm": verifier}, program, blocks,
                                                               block_layers, seconds)).values()
        # a program that printed nothing has no answer to pick
        scores = [[s if k is not None else None for s, k in zip(ss, keys)] for ss, keys in zip(scores, program.keys)]
        best = [labels[best_of(ss)] if labels else 0 for ss, labels in zip(scores, program.labels)]
        weighted = [labels[vote(keys, [max(s or 0.0, 0.0) for s in ss])] if labels else 0
                    for ss, keys, labels in zip(scores, program.keys, program.labels)]
        flat = [(s, y) for ss, labels in zip(scores, program.labels) for s, y in zip(ss, labels) if s is not None]
        orm_info = {**extra, "train_questions": verifier.info.questions, "held_out": verifier.info.metrics,
                    "layers": verifier.info.layers, "pooling": verifier.info.pooling,
                    "auroc_answering": metrics.auroc([s for s, _ in flat], [y for _, y in flat])}
        cost = (program.tokens + tokens, program.seconds + seconds)
        rows["program_orm"] = {**row(best, *cost), **orm_info}
        rows["program_orm_vote"] = {**row(weighted, *cost), **orm_info}
    return rows


async def redraw_programs(results: list[dict], args) -> None:
    """`--programs-only`: draw the program rows of every arith/units task of a previous results JSON again (same test
    questions, seed, temperature), keeping its other rows as they were measured (marked `reused_from`)."""
    from lamina.tasks.task import load_task

    for r in results:
        for v in r["methods"].values():
            v.setdefault("reused_from", str(args.programs_only))
        if not r["task"].startswith(PROGRAM_TASKS):
            continue
        task = load_task(r["task"])
        scorer = Scorer.from_spec(task.scorer)
        scorer.prepare()
        examples = task.examples("test", r.get("limit"))
        stem = test_stem(args, r["task"], r.get("limit"))
        for stale in ("program_vote", "program_coverage", "program_orm", "program_orm_vote"):
            r["methods"].pop(stale, None)  # none of an old draw's program rows stays beside the new ones
        r["methods"].update(await program_rows(r["task"], task, examples, scorer, args, stem))
        print(f"{r['task']}: program vote {r['methods']['program_vote']['accuracy']:.2f}, program coverage "
              f"{r['methods']['program_coverage']['accuracy']:.2f}", flush=True)


def public_pass_rates(drawn: Drawn, examples) -> tuple[list[list[float | None]], float]:
    """Per sample, the fraction of its question's PUBLIC tests (the examples shown in the prompt; the scorer's hidden
    tests are never read) its program passes in the sandbox; and the seconds that took."""
    from lamina.rewards import Response, TestsPassed

    async def all_questions() -> list[list[float | None]]:
        out = []
        for texts, example in zip(drawn.texts, examples):
            checker = TestsPassed(list(example.public_tests), timeout_s=5.0)
            out.append(list(await checker.score("", [Response(t) for t in texts])) if example.public_tests
                       else [None] * len(texts))
        return out

    start = time.perf_counter()
    rates = asyncio.run(all_questions())
    return rates, time.perf_counter() - start


def passing_vote(keys: list[str | None], scores: list[float | None]) -> int:
    """Majority vote among the samples with the highest score (all samples when none has one)."""
    top = max((s for s in scores if s is not None), default=None)
    return vote(keys, [1.0 if top is None or s == top else 0.0 for s in scores])


def picks(drawn: Drawn, orms: list[str]) -> dict[str, list[int]]:
    """Per selector, the label of the sample it picks for each question."""
    out: dict[str, list[int]] = {}

    def add(name: str, label: int) -> None:
        out.setdefault(name, []).append(label)

    for q, labels in enumerate(drawn.labels):
        keys = drawn.keys[q]
        add("majority", labels[vote(keys)] if labels else 0)
        for scorer in ["self_certainty", "mean_logprob"] + orms:
            scores = drawn.scores[scorer][q]
            add(scorer, labels[best_of(scores)] if labels else 0)
            if scorer != "mean_logprob":
                add(f"{scorer}_vote", labels[vote(keys, [max(s or 0.0, 0.0) for s in scores])] if labels else 0)
        if "public_tests" in drawn.scores:
            add("public_tests", labels[passing_vote(keys, drawn.scores["public_tests"][q])] if labels else 0)
        add("coverage", int(any(labels)))
    return out


def accuracy(correct: list[int]) -> dict:
    """The fraction right of per-question 0/1 picks, with its 95% Wilson interval and n."""
    n = len(correct)
    low, high = wilson_interval(sum(correct), n)
    return {"accuracy": sum(correct) / n if n else 0.0, "ci95": [low, high], "n": n}


def row(correct: list[int], tokens: float, seconds: float) -> dict:
    n = len(correct)
    return {**accuracy(correct), "tokens_per_example": tokens / max(n, 1), "seconds_per_example": seconds / max(n, 1)}


def score_orms(verifiers: dict[str, LearnedVerifier], drawn: Drawn, blocks: dict, block_layers: list[int],
               seconds: float) -> dict[str, tuple[list[list[float | None]], int, float]]:
    """Per ORM, its scores of every sample, the tokens its forward pass read and its seconds. `blocks`: every sample's
    feature blocks at `block_layers`, from one forward pass over each question's prompt and its samples' answers
    that took `seconds` (each ORM is charged all of it, as it would need it alone, plus its own probe time)."""
    from lamina.rewards.learned import assemble

    # the forward reads each question's prompt once and its samples' answers (answer_summary shares the prompt)
    tokens = sum(start + sum(len(s) - start for s in seqs) for start, seqs in zip(drawn.starts, drawn.sequences))
    out = {}
    for verifier in verifiers.values():
        verifier.bind(None, "default")  # refuses another model
    for name, verifier in verifiers.items():
        start = time.perf_counter()
        it = iter(verifier.probe.predict(assemble(blocks, block_layers, verifier.info.layers, verifier.info.pooling)))
        scores = [[next(it) for _ in seqs] for seqs in drawn.sequences]
        out[name] = (scores, tokens, seconds + time.perf_counter() - start)
    return out


def per_task(text: str | None, flag: str) -> dict[str, int | None]:
    """`--limit`/`--train-size` values: "N" for every task, "N,code-2=M" (or just "code-2=M") to set some tasks
    apart; key "" is the default. argparse error text on a bad value."""
    out: dict[str, int | None] = {"": None}
    for part in filter(None, (text or "").split(",")):
        task, _, value = part.rpartition("=")
        try:
            out[task.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: {part!r} is not N or TASK=N") from None
        if out[task.strip()] < 1:
            raise argparse.ArgumentTypeError(f"{flag}: {part!r} must be >= 1")
    return out


def for_task(values: dict[str, int | None], name: str) -> int | None:
    return values.get(name, values[""])


async def run_task(name: str, args) -> dict:
    from lamina.tasks.task import load_task
    from lamina.verifiers.train import grow_train

    task = load_task(name)
    train_size, limit = for_task(args.train_size, name), for_task(args.limit, name)
    if task.spec.source.type == "generated":
        grow_train(task, train_size)
    scorer = Scorer.from_spec(task.scorer)
    scorer.prepare()
    size = train_size if task.spec.source.type == "generated" else "all"
    with_ = "".join("+" + o for o in args.train_with.get(name, []))
    paths = {probe: args.cache / (f"{name}-{orm_name(probe)}-train{size}-n{train_samples(args)}-seed{args.seed}"
                                  f"-cv{with_}.json") for probe in args.probes}
    orms = {orm_name(probe): verifier for probe, verifier in (await train_orms(task, args, paths, train_size)).items()}
    examples = task.examples("test", limit)
    max_tokens = task.spec.max_tokens
    sample_layer = [{"type": "generate", "samples": args.samples, "logprobs": 20}]
    stem = test_stem(args, name, limit)
    drawn = await draw_cached(model_spec("samples", args.temperature, max_tokens, args.threads, args.seed,
                                         sample_layer), task, examples, scorer, f"{name} samples@{args.samples}",
                              Path(f"{stem}.samples.json"))
    greedy = await draw_cached(model_spec("greedy", 0.0, max_tokens, args.threads, args.seed, [{"type": "generate"}]),
                               task, examples, scorer, f"{name} greedy", Path(f"{stem}.greedy.json"))
    orm_cost: dict[str, tuple[int, float]] = {}
    if scorer.kind == "code":
        drawn.scores["public_tests"], seconds = await asyncio.to_thread(public_pass_rates, drawn, examples)
        orm_cost["public_tests"] = (0, seconds)
    if orms:  # the test samples' hidden states only where a learned verifier reads them
        blocks, block_layers, seconds = await asyncio.to_thread(test_blocks, drawn, Path(f"{stem}.features.npz"),
                                                                args.threads)
        for orm, (scores, tokens, seconds) in (await asyncio.to_thread(score_orms, orms, drawn, blocks,
                                                                       block_layers, seconds)).items():
            drawn.scores[orm] = scores
            orm_cost[orm] = (tokens, seconds)

    methods = {"greedy": row([labels[0] if labels else 0 for labels in greedy.labels], greedy.tokens,
                             greedy.seconds)}
    for method, correct in picks(drawn, list(orms)).items():
        tokens, seconds = orm_cost.get(method.removesuffix("_vote"), (0, 0.0))
        methods[method] = row(correct, drawn.tokens + tokens, drawn.seconds + seconds)
    reused = reused_program_rows(args.program_from, name, len(examples), args)
    if reused:
        methods.update(reused)
    elif name.startswith(PROGRAM_TASKS) and not args.no_program:
        methods.update(await program_rows(name, task, examples, scorer, args, stem))
    flat_labels = [y for labels in drawn.labels for y in labels]
    qids = [str(q) for q, labels in enumerate(drawn.labels) for _ in labels]
    auroc = {}
    for scorer_name in ["self_certainty", "mean_logprob"] + list(orms) + (["public_tests"] if scorer.kind == "code"
                                                                           else []):
        values = drawn.flat(scorer_name)
        rows = [i for i, v in enumerate(values) if v is not None]
        auroc[scorer_name] = metrics.auroc([values[i] for i in rows], [flat_labels[i] for i in rows])
    return {"task": name, "questions": len(examples), "test_size": len(task.examples("test")), "limit": limit,
            "train_size": train_size, "samples": args.samples, "train_samples_per_question": train_samples(args),
            "methods": methods, "auroc": auroc,
            "ece": {orm: metrics.ece(drawn.flat(orm), flat_labels) for orm in orms},
            "sample_accuracy": sum(flat_labels) / max(len(flat_labels), 1),
            "first_sample_accuracy": metrics.first_sample_accuracy(qids, flat_labels),
            "train_with": args.train_with.get(name, []),
            "orms": {orm: {"probe": v.probe.kind, "train_questions": v.info.questions,
                           "train_samples": v.info.samples, "layers": v.info.layers, "pooling": v.info.pooling,
                           "held_out": v.info.metrics}
                     for orm, v in orms.items()}}


def default_out(no_orm: bool) -> Path:
    """The results' path without --out: a run with no learned verifier never writes over the published table's."""
    return Path("benchmarks/results/verifiers" + ("-noorm" if no_orm else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default {','.join(TASKS)})")
    parser.add_argument("--limit", type=lambda t: per_task(t, "--limit"), default=per_task(None, "--limit"),
                        help="first N test questions per task (default: all); N,TASK=M sets a task apart")
    parser.add_argument("--train-size", type=lambda t: per_task(t, "--train-size"),
                        default=per_task("1000", "--train-size"),
                        help="ORM train questions of a generated task (default 1000); N,TASK=M sets a task apart")
    parser.add_argument("--train-with", type=train_with, default={},
                        help="TASK=OTHER[+OTHER],...: the ORM of TASK also fits OTHER's train split (sizes from "
                             "--train-size; never its dev or test)")
    parser.add_argument("--samples", type=int, default=8, help="samples per test question (default 8)")
    parser.add_argument("--train-samples", type=int, help="samples per train question of the learned verifiers "
                        "(default: --samples); e.g. --samples 32 --train-samples 8 selects among 32 samples with "
                        "verifiers trained (and cached) on 8 per question")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="engine threads (default 1)")
    parser.add_argument("--no-program", action="store_true", help="skip the program-aided run")
    parser.add_argument("--program-from", type=Path, help="a previous results JSON: take a task's program-aided "
                        "rows from it when it drew the same test questions (same samples, temperature, seed)")
    parser.add_argument("--programs-only", type=Path, metavar="OLD.json",
                        help="draw only the program-aided rows again, on the tasks and test questions of a previous "
                             "results JSON, and keep its other rows (marked reused_from)")
    parser.add_argument("--program-orm", type=int, metavar="N", default=0,
                        help="also a learned verifier of programs, trained on N train questions' programs "
                             "(program_orm, program_orm_vote rows)")
    parser.add_argument("--keep", type=Path, metavar="OLD.json",
                        help="a previous results JSON (same samples, temperature, seed): keep its tasks not run now "
                             "(marked reused_from, each with the CPU and threads it was measured with); the tasks "
                             "run now replace theirs")
    parser.add_argument("--mlp", action="store_true", help="also an MLP-probe ORM (orm_mlp), on the same states")
    parser.add_argument("--no-orm", action="store_true", help="no learned verifiers: no train sampling and no hidden "
                        "states, only the selectors that need no training (and greedy, coverage)")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-verifiers"), help="ORMs and finished tasks")
    parser.add_argument("--out", type=Path, help="OUT.json, OUT.png (default benchmarks/results/verifiers, with "
                        "--no-orm benchmarks/results/verifiers-noorm: never over the published table's files)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    args.train_samples = args.train_samples or args.samples
    if min(args.samples, args.train_samples) < 2 or args.train_size[""] is None:
        parser.error(f"--samples and --train-samples must be >= 2 and --train-size needs a default N (got "
                     f"{args.samples}, {args.train_samples})")
    if args.no_orm and (args.mlp or args.program_orm or args.train_with):
        parser.error("--no-orm trains no verifier: drop --mlp, --program-orm and --train-with")
    args.probes = [] if args.no_orm else ["logistic"] + (["mlp"] if args.mlp else [])
    args.out = args.out or default_out(args.no_orm)
    import torch

    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu}; {args.threads} engine thread(s)", flush=True)
    results = []
    if args.programs_only and args.keep:
        parser.error("--programs-only and --keep: choose one")
    keep = previous(args.keep, args, parser, "--keep") if args.keep else None  # refused before anything is drawn
    if args.programs_only:
        old = previous(args.programs_only, args, parser, "--programs-only")
        results = old["tasks"]
        asyncio.run(redraw_programs(results, args))
    for name in [] if args.programs_only else [t.strip() for t in args.tasks.split(",") if t.strip()]:
        limit, train_size = for_task(args.limit, name), for_task(args.train_size, name)
        key = (f"{name}-limit{limit or 'all'}-train{train_size}-n{args.samples}-t{args.temperature}"
               f"-seed{args.seed}{'-noprog' if args.no_program else '-prog' + program_tag()}"
               f"{f'-porm{args.program_orm}' if args.program_orm else ''}{'-mlp' if args.mlp else ''}"
               f"{'-noorm' if args.no_orm else ''}"
               f"{f'-trainn{args.train_samples}' if args.train_samples != args.samples else ''}-cv"
               f"{''.join('+' + o for o in args.train_with.get(name, []))}.json")
        done = args.cache / key
        if done.exists():
            results.append({"measured": None, **json.loads(done.read_text())})  # None: cached before it was kept
            print(f"{name}: reused {done}", flush=True)
            continue
        result = {**asyncio.run(run_task(name, args)), "measured": {"cpu": cpu, "threads": args.threads}}
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(result, indent=1))
        results.append(result)
        m = result["methods"]
        orm = format(m["orm"]["accuracy"], ".2f") if "orm" in m else "-"
        print(f"{name}: greedy {m['greedy']['accuracy']:.2f}, majority {m['majority']['accuracy']:.2f}, "
              f"orm {orm}, coverage {m['coverage']['accuracy']:.2f}", flush=True)
    if keep is not None:
        results = kept(keep, args.keep, results)
    sizes = train_sizes(results)
    if args.probes:
        trained = f"ORM trained on {sizes} train questions x {args.train_samples} samples"
    else:
        trained = "no learned verifier run now (--no-orm)" + (f"; the kept tasks' ORM trained on {sizes} train "
                                                              "questions" if sizes else "")
    print(f"\nSelectors on the test split, embedded SmolLM2-135M-Instruct, {args.samples} samples at T="
          f"{args.temperature}, {trained}; CPU: {cpu}")
    from lamina.tasks.task import load_task

    for r in results:
        r.setdefault("test_size", len(load_task(r["task"]).examples("test")))  # results cached before it was kept
        r["targets"] = targets(r)
    print(table(results, args.markdown))
    print("\n".join(target_lines(results)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu, "threads": args.threads, "samples": args.samples, "temperature": args.temperature,
              "seed": args.seed, "tasks": results}
    if args.programs_only:  # the rows kept were measured there; the program rows' new forward passes here
        record.update(cpu=old.get("cpu"), threads=old.get("threads"),
                      programs_redrawn={"cpu": cpu, "threads": args.threads})
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

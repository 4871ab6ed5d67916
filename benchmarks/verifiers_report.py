"""The report of benchmarks/verifiers.py: its table, PNG, issue 13's targets, and the merging of a previous run's
results (--keep, --programs-only)."""
from __future__ import annotations

import json
import math
from pathlib import Path

METHODS = ["greedy", "majority", "self_certainty", "self_certainty_vote", "mean_logprob", "orm", "orm_vote",
           "orm_mlp", "orm_mlp_vote", "public_tests", "program_vote", "program_orm", "program_orm_vote", "coverage",
           "program_coverage"]  # in tables, plots
SCORERS = ["self_certainty", "mean_logprob", "orm", "orm_mlp", "public_tests"]  # AUROC over the samples


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    cols = min(3, len(results))
    rows_ = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.6 * rows_), squeeze=False)
    markers = dict(zip(METHODS, "os^v<>DPX*hpH8dX"))
    for ax, res in zip(axes.flat, results):
        for k, (method, r) in enumerate(res["methods"].items()):
            acc, (low, high) = r["accuracy"], r["ci95"]
            nudge = 1 + 0.025 * (k - len(res["methods"]) / 2)  # methods at one cost side by side
            yerr = [[max(acc - low, 0.0)], [max(high - acc, 0.0)]]
            ax.errorbar(r["tokens_per_example"] * nudge, acc, yerr=yerr,
                        fmt=markers.get(method, "o"), capsize=2, label=method,
                        color=plt.cm.tab20(METHODS.index(method) % 20 if method in METHODS else 19))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{res['task']} (test, n={res['questions']})")
        ax.set_xlabel("tokens per example")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    legend = {}  # every method of any task, once, in METHODS order
    for ax in axes.flat:
        legend.update({label: h for h, label in zip(*ax.get_legend_handles_labels())})
    ordered = sorted(legend, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))
    fig.legend([legend[m] for m in ordered], ordered, loc="lower center", ncol=5, fontsize=8)
    samples = "/".join(str(n) for n in sorted({r.get("samples", 8) for r in results}))
    fig.suptitle(f"Selectors among {samples} samples, SmolLM2-135M-Instruct on CPU (95% Wilson intervals)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)


def table(results: list[dict], markdown: bool) -> str:
    names = [m for m in METHODS if any(m in r["methods"] for r in results)]
    scorers = [s for s in SCORERS if any(s in r["auroc"] for r in results)]
    head = ["task", "n/test"] + names + [f"AUROC {s}" for s in scorers]
    lines = [head]
    for r in results:
        cells = [r["task"], f"{r['questions']}/{r['test_size']}" if "test_size" in r else str(r["questions"])]
        for m in names:
            v = r["methods"].get(m)
            cells.append(f"{v['accuracy']:.2f} ({v['ci95'][0]:.2f}-{v['ci95'][1]:.2f})" if v else "-")
        cells += [f"{r['auroc'][s]:.2f}" if r["auroc"].get(s) is not None else "-" for s in scorers]
        lines.append(cells)
    cost = ["", "tokens, seconds per example:"] + [
        f"{r['task']} {m}: {v['tokens_per_example']:.0f} tok, {v['seconds_per_example']:.2f} s"
        for r in results for m, v in r["methods"].items()
        if m in ("greedy", "majority", "orm", "public_tests", "program_vote", "program_orm")]
    if markdown:
        text = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        text += ["| " + " | ".join(c) + " |" for c in lines[1:]]
        return "\n".join(text + cost)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines] + cost)


CEILINGS = ("greedy", "coverage", "program_coverage")  # not selectors
LEARNED = ("orm", "orm_vote", "orm_mlp", "orm_mlp_vote")


def targets(result: dict) -> dict:
    """Issue 13's targets on one task: the best selector's margin over greedy (target >= 0.10), and per learned
    selector the fraction of the majority-to-coverage gap it closes (target >= 0.5; None when there is no gap), judged
    on the verifier's best-of-8 pick (orm; the weighted votes are reported beside it). A verifier of programs is
    measured against the programs' own gap (program vote to program coverage), on program_orm."""
    methods = {m: v["accuracy"] for m, v in result["methods"].items()}
    best = max((m for m in methods if m not in CEILINGS), key=lambda m: methods[m])
    gap = methods["coverage"] - methods["majority"]
    closed = {m: (methods[m] - methods["majority"]) / gap if gap > 0 else None for m in LEARNED if m in methods}
    if "program_orm" in methods:
        program_gap = methods["program_coverage"] - methods["program_vote"]
        closed.update({m: (methods[m] - methods["program_vote"]) / program_gap if program_gap > 0 else None
                       for m in ("program_orm", "program_orm_vote")})
    return {"best_selector": best, "best_minus_greedy": methods[best] - methods["greedy"],
            "beats_greedy_by_10": methods[best] - methods["greedy"] >= 0.10, "gap_closed": closed,
            "orm_closes_half": (closed.get("orm") or 0.0) >= 0.5 if "orm" in methods else None,
            "program_orm_closes_half": ((closed.get("program_orm") or 0.0) >= 0.5 if "program_orm" in methods
                                        else None)}


def target_lines(results: list[dict]) -> list[str]:
    lines = ["", "targets (best selector - greedy >= 0.10; learned verifier closes >= 1/2 of majority->coverage, "
             "a verifier of programs of program vote->program coverage):"]
    verdict = {True: "met", False: "NOT met", None: "-"}
    for r in results:
        t = r["targets"]
        closed = ", ".join(f"{m} {c:.2f}" if c is not None else f"{m} -" for m, c in t["gap_closed"].items())
        lines.append(f"{r['task']}: best {t['best_selector']} {t['best_minus_greedy']:+.2f} vs greedy "
                     f"({'met' if t['beats_greedy_by_10'] else 'NOT met'}); gap closed: {closed} "
                     f"(orm: {verdict[t['orm_closes_half']]}; verifier of programs: "
                     f"{verdict[t.get('program_orm_closes_half')]})")
    return lines


def train_sizes(results: list[dict]) -> str:
    """The ORMs' train questions per task, e.g. "arith-1 136, code-2 100"."""
    return ", ".join(f"{r['task']} {r['orms']['orm']['train_questions']}" for r in results if "orm" in r["orms"])


def same_draw(record: dict, args) -> bool:
    """Whether a results JSON drew its samples with this run's samples per question, temperature and seed."""
    return (record.get("samples"), record.get("temperature"), record.get("seed")) == (args.samples, args.temperature,
                                                                                     args.seed)


def previous(path: Path, args, parser, flag: str) -> dict:
    """A previous results JSON drawn with this run's samples, temperature and seed (parser error otherwise)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"{flag} {path}: not a results JSON ({exc})")
    if not same_draw(old, args):
        parser.error(f"{flag} {path}: drawn with samples/temperature/seed "
                     f"{old.get('samples')}/{old.get('temperature')}/{old.get('seed')}, not "
                     f"{args.samples}/{args.temperature}/{args.seed}")
    return old


def kept(old: dict, path: Path, results: list[dict]) -> list[dict]:
    """OLD's task results in its order, each task run now in place of its old result (new tasks after them); a kept
    result says where it came from and the CPU and threads it was measured with (its own, else OLD's; with OLD's
    programs_redrawn when its program rows were drawn again)."""
    now = {r["task"]: r for r in results}
    merged = []
    for r in old.get("tasks", []):
        if r["task"] in now:
            merged.append(now.pop(r["task"]))
            continue
        measured = dict(r.get("measured") or {"cpu": old.get("cpu"), "threads": old.get("threads")})
        if "programs_redrawn" in old and "program_vote" in r["methods"]:  # drawn again (--programs-only) later
            measured.setdefault("programs_redrawn", old["programs_redrawn"])
        merged.append({**r, "measured": measured, "reused_from": r.get("reused_from", str(path))})
    return merged + list(now.values())

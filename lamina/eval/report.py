"""Compare eval runs: an aligned text table and a PNG of accuracy against tokens per example (95% CI bars)."""
from __future__ import annotations

from pathlib import Path

from lamina.eval.stats import RunSummary, summarize
from lamina.eval.store import RunStore


def load_run(path: str | Path) -> tuple[dict, RunSummary]:
    with RunStore.open_existing(path) as store:
        config = store.config()
        label = f"{config.get('arch', Path(path).stem)} [{config.get('task')}/{config.get('split')}]"
        return config, summarize(label, store.rows())


def format_table(summaries: list[RunSummary]) -> str:
    """One row per run: calls/ex and tokens/ex are the cost as if nothing was cached; spent/ex what was spent now
    (0 for a run replayed from the call cache)."""
    ks = sorted({k for s in summaries for k in s.pass_at})
    head = ["run", "n", "accuracy", "95% CI", "calls/ex", "tokens/ex", "compl/ex", "spent/ex", "sec/ex", "errors"]
    head += [f"pass@{k}" for k in ks]
    rows = [head]
    for s in summaries:
        row = [s.name, str(s.examples), f"{s.accuracy:.3f}", f"[{s.ci_low:.3f}, {s.ci_high:.3f}]", f"{s.calls:.2f}",
               f"{s.tokens:.1f}", f"{s.completion_tokens:.1f}", f"{s.spent_tokens:.1f}", f"{s.seconds:.2f}",
               str(s.errors)]
        rows.append(row + [f"{s.pass_at[k]:.3f}" if k in s.pass_at else "-" for k in ks])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_components(summary: RunSummary) -> str:
    if not summary.by_component:
        return ""
    lines = [f"per-component usage per example ({summary.name}):"]
    for name, u in summary.by_component.items():
        lines.append(f"  {name:<24} calls={u['calls']:.2f} prompt_tokens={u['prompt_tokens']:.1f} "
                     f"completion_tokens={u['completion_tokens']:.1f} seconds={u['seconds']:.2f}")
    return "\n".join(lines)


def plot(summaries: list[RunSummary], path: str | Path, title: str = "Accuracy vs compute") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        err = [[max(0.0, s.accuracy - s.ci_low)], [max(0.0, s.ci_high - s.accuracy)]]  # rounding can cross 0
        ax.errorbar([s.tokens], [s.accuracy], yerr=err, fmt="o", capsize=4, label=s.name)
    ax.set_xscale("log")
    ax.set_xlabel("mean tokens per example (prompt + completion, log scale)")
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Architecture runner on the embedded model: what concurrency, one-request sampling and the call cache buy.

Three comparisons, each measured against its peer in the same run:
  1. a layer of 8 generators (run concurrently, batched by the engine) vs the same 8 calls one layer at a time;
  2. 8 samples as ONE request with n=8 (prefill once, fork the KV cache) vs 8 one-sample generators;
  3. a generate-critique-rank-fuse run replayed from the SQLite call cache vs the cold run.

    python benchmarks/architectures.py [--tokens 24] [--out benchmarks/results] [--markdown]
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from lamina.architecture import Architecture

QUESTION = [{"role": "user", "content": "Write two sentences about why the sky is blue."}]


def alias(tokens: int) -> dict:
    return {"small": {"model": "default", "engine": {"kv_cache_memory_gb": 0.5},
                      "params": {"max_tokens": tokens, "temperature": 0.8}}}


def spec(name: str, layers: list, tokens: int) -> dict:
    return {"name": name, "models": alias(tokens), "layers": layers}


def timed(data: dict, cache=False, messages=QUESTION) -> tuple[float, object]:
    arch = Architecture.from_spec(data, f"bench:{data['name']}", cache=cache)

    async def go():
        try:
            return await arch.run(messages)
        finally:
            await arch.aclose()

    start = time.perf_counter()
    result = asyncio.run(go())
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    t = args.tokens
    gens = [{"type": "generate", "name": f"g{i}"} for i in range(8)]
    cases = {
        "8 generators, one layer": spec("parallel", [gens], t),
        "8 generators, 8 layers": spec("sequential", [[g] for g in gens], t),
        "8 samples, one n=8 request": spec("one_request", [[{"type": "generate", "samples": 8}]], t),
        "grf cold": spec("grf", [[{"type": "generate", "samples": 4}], [{"type": "critique"}],
                                 [{"type": "rank", "top_k": 2}], [{"type": "fuse"}]], t),
    }
    timed(spec("warmup", [[{"type": "generate"}]], 4))  # loads the model once, outside the timings
    rows: dict[str, tuple[float, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calls.sqlite"
        for name, data in tqdm(cases.items(), desc="architectures", unit="case"):
            rows[name] = timed(data, cache=cache if name == "grf cold" else False)
            tokens = rows[name][1].usage.spent_completion_tokens
            tqdm.write(f"{name}: {rows[name][0]:.2f}s, {tokens / rows[name][0]:.1f} tok/s")
        rows["grf cached"] = timed(cases["grf cold"], cache=cache)
    report(rows, args)


def report(rows: dict, args: argparse.Namespace) -> None:
    par, seq = rows["8 generators, one layer"], rows["8 generators, 8 layers"]
    one = rows["8 samples, one n=8 request"]
    cold, warm = rows["grf cold"], rows["grf cached"]
    calls = [e for e in par[1].trace if e["event"] == "call"]
    wall_over_sum = par[1].seconds / sum(e["seconds"] for e in calls)
    lines = ["| case | wall s | calls | cached | completion tok spent | tok/s |", "|---|---:|---:|---:|---:|---:|"]
    for name, (seconds, result) in rows.items():
        u = result.usage
        lines.append(f"| {name} | {seconds:.2f} | {u.calls} | {u.cached_calls} | {u.spent_completion_tokens} | "
                     f"{u.spent_completion_tokens / seconds:.1f} |")
    ratios = [f"layer concurrency: one layer / 8 layers wall = {par[0] / seq[0]:.2f} "
              f"(wall / sum of call seconds in the layer = {wall_over_sum:.2f})",
              f"one n=8 request vs 8 one-sample generators: {par[0] / one[0]:.2f}x faster",
              f"cache replay vs cold run: {cold[0] / max(warm[0], 1e-6):.0f}x faster, "
              f"{warm[1].usage.calls} model calls, answer identical: {warm[1].answer == cold[1].answer}"]
    print("\n".join(lines + [""] + ratios))
    plot(rows, Path(args.out))


def plot(rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, [rows[n][0] for n in names], color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2"])
    ax.set_xlabel("wall seconds (embedded SmolLM2-135M, CPU)")
    ax.invert_yaxis()
    ax.set_title("Lamina architectures: concurrency, n-sampling, call cache")
    fig.tight_layout()
    fig.savefig(out / "architectures.png", dpi=120)
    print(f"plot: {out / 'architectures.png'}")


if __name__ == "__main__":
    main()

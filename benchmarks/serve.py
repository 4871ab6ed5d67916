"""Server overhead: N concurrent streaming clients over loopback vs the same workload on AsyncEngine in-process.

    python benchmarks/serve.py [--model default] [--concurrency 1 8 32] [--requests-per-client 2] [--max-tokens 32]
                               [--repeats 2]      (or: lamina bench serve ...)

Each client sends `requests-per-client` streaming chat requests one after another (max_tokens tokens each,
ignore_eos so every request generates the same count). The server runs as a `lamina serve` subprocess on
127.0.0.1, driven with raw httpx SSE; the direct run calls `AsyncEngine.generate` with the same prompts and
SamplingParams. Both are loaded up front; per concurrency level they take turns for --repeats rounds
(never both at once; the idle one only waits) and each mode's rounds are pooled. Prints a table with server/direct ratios
and writes a PNG plot and JSON next to it (--out).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(slots=True)
class Sample:
    ttft: float
    latency: float
    tokens: int


@dataclass(slots=True)
class Row:
    mode: str
    concurrency: int
    requests: int
    seconds: float
    req_per_s: float
    tok_per_s: float
    ttft_p50: float
    ttft_p95: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarise(mode: str, concurrency: int, samples: list[Sample], seconds: float) -> Row:
    ttfts = [s.ttft for s in samples]
    return Row(mode, concurrency, len(samples), seconds, len(samples) / seconds, sum(s.tokens for s in samples) / seconds,
               statistics.median(ttfts), percentile(ttfts, 0.95))


def prompt_for(client: int, request: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Client {client}, request {request}: write a short poem about the sea."}]


async def run_clients(concurrency: int, per_client: int, one, bar) -> tuple[list[Sample], float]:
    samples: list[Sample] = []

    async def client(c: int) -> None:
        for r in range(per_client):
            samples.append(await one(c, r))
            bar.update(1)

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return samples, time.perf_counter() - start


# --- server over loopback ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "lamina", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--kv-cache-memory-gb", str(args.kv_cache_memory_gb), "--max-queue", "1024"]
    log = Path(tempfile.gettempdir()) / f"lamina-bench-serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lamina serve exited ({log}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("lamina serve did not start in 300 s")


async def server_phase(base: str, args: argparse.Namespace, concurrency: int, bar) -> tuple[list[Sample], float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        async def one(c: int, r: int) -> Sample:
            body = {"model": args.model, "messages": prompt_for(c, r), "max_tokens": args.max_tokens,
                    "temperature": 0.8, "seed": c * 1000 + r, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            start, ttft, tokens = time.perf_counter(), None, 0
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        ttft = time.perf_counter() - start
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
            latency = time.perf_counter() - start
            return Sample(ttft if ttft is not None else latency, latency, tokens)

        await one(0, -1)  # warm-up: first request pays one-off costs (connection, kernels)
        return await run_clients(concurrency, args.requests_per_client, one, bar)


# --- AsyncEngine in-process -------------------------------------------------------------------------------------

async def direct_phase(engine, args: argparse.Namespace, concurrency: int, bar) -> tuple[list[Sample], float]:
    from lamina.engine.sampling_params import SamplingParams

    tokenizer = engine.tokenizer

    async def one(c: int, r: int) -> Sample:
        prompt = tokenizer.apply_chat_template(prompt_for(c, r), add_generation_prompt=True)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.8, seed=c * 1000 + r, ignore_eos=True)
        start, ttft, tokens = time.perf_counter(), None, 0
        async for delta in engine.generate(prompt, params):
            if ttft is None and delta.outputs and delta.outputs[0].text:
                ttft = time.perf_counter() - start
            tokens += delta.num_completion_tokens
        latency = time.perf_counter() - start
        return Sample(ttft if ttft is not None else latency, latency, tokens)

    await one(0, -1)
    return await run_clients(concurrency, args.requests_per_client, one, bar)


# --- report -----------------------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    direct = {r.concurrency: r for r in rows if r.mode == "direct"}
    print(f"\n{'clients':>7} {'mode':<7} {'reqs':>5} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9}"
          f"   {'server/direct: req/s':>20} {'tok/s':>6} {'TTFT p50':>9}")
    for r in sorted(rows, key=lambda r: (r.concurrency, r.mode != "server")):
        line = (f"{r.concurrency:>7} {r.mode:<7} {r.requests:>5} {r.req_per_s:>7.2f} {r.tok_per_s:>8.1f} "
                f"{r.ttft_p50 * 1000:>7.0f}ms {r.ttft_p95 * 1000:>7.0f}ms")
        d = direct.get(r.concurrency)
        if r.mode == "server" and d is not None:
            line += (f"   {r.req_per_s / d.req_per_s:>20.2f} {r.tok_per_s / d.tok_per_s:>6.2f} "
                     f"{r.ttft_p50 / d.ttft_p50:>9.2f}")
        print(line)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r.concurrency for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    for k, mode in enumerate(("direct", "server")):
        by = {r.concurrency: r for r in rows if r.mode == mode}
        xs = [i + (k - 0.5) * width for i in range(len(levels))]
        axes[0].bar(xs, [by[c].tok_per_s for c in levels], width, label=mode)
        axes[1].bar(xs, [by[c].ttft_p50 * 1000 for c in levels], width, label=mode)
    for ax, title in zip(axes, ("throughput (completion tokens/s)", "time to first token p50 (ms)")):
        ax.set_xticks(range(len(levels)), [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("lamina serve over loopback vs AsyncEngine in-process")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds per level, pooled")
    parser.add_argument("--kv-cache-memory-gb", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve"))
    args = parser.parse_args()

    from tqdm import tqdm

    from lamina.engine.engine import AsyncEngine

    rows: list[Row] = []
    proc, base = start_server(args)
    engine = AsyncEngine(args.model, kv_cache_memory_gb=args.kv_cache_memory_gb)
    total = 2 * args.repeats * sum(args.concurrency) * args.requests_per_client
    try:
        with tqdm(total=total, desc="serve bench", unit="req", dynamic_ncols=True) as bar:
            for n in args.concurrency:
                pooled: dict[str, tuple[list[Sample], float]] = {"server": ([], 0.0), "direct": ([], 0.0)}
                for rep in range(args.repeats):  # modes alternate (and swap order) so background load hits both
                    for mode in ("server", "direct") if rep % 2 == 0 else ("direct", "server"):
                        phase = server_phase(base, args, n, bar) if mode == "server" else direct_phase(engine, args, n, bar)
                        samples, seconds = asyncio.run(phase)
                        pooled[mode] = (pooled[mode][0] + samples, pooled[mode][1] + seconds)
                        bar.set_postfix_str(f"{mode} {sum(x.tokens for x in samples) / seconds:.0f} tok/s at {n} clients")
                rows += [summarise(mode, n, samples, seconds) for mode, (samples, seconds) in pooled.items()]
    finally:
        engine.shutdown()
        proc.terminate()
        proc.wait(timeout=30)

    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

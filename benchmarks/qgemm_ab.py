"""A/B of the block-quantized GEMM's two arithmetics (kernels/__init__.py: "exact" and "fast") on every native
linear of a model, for one row (or --rows): CPU time of all linears, the two modes interleaved, many repeats; and
the largest difference between their outputs. Needs the avx512 kernels (the only variant with "fast").

    OMP_NUM_THREADS=1 python benchmarks/qgemm_ab.py [--model default] [--repeats 200] [--rows 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lamina import LLM
from lamina.engine.models.block_quant import BlockQuantLinear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    llm = LLM(args.model, num_threads=1)
    linears = [m for m in llm.engine.runner.model.modules() if isinstance(m, BlockQuantLinear)]
    kernel = linears[0].kernel
    assert kernel.isa == "avx512", f"'fast' needs the avx512 kernels, not {kernel.isa}"
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(args.rows, m.in_features, generator=gen) for m in linears]
    before = kernel.qgemm_mode()
    times: dict[str, list[float]] = {"exact": [], "fast": []}
    try:
        worst = 0.0
        for mode in ("exact", "fast"):  # warm-up, and the outputs compared
            kernel.set_qgemm_mode(mode)
            outs = [m(x) for m, x in zip(linears, inputs)]
            if mode == "exact":
                exact = outs
            else:
                worst = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(exact, outs))
        for i in range(args.repeats):
            for mode in (("exact", "fast") if i % 2 == 0 else ("fast", "exact")):
                kernel.set_qgemm_mode(mode)
                start = time.process_time()
                for m, x in zip(linears, inputs):
                    m(x)
                times[mode].append((time.process_time() - start) * 1e3)
    finally:
        kernel.set_qgemm_mode(before)
    print(f"{len(linears)} native linears, {args.rows} row(s), {args.repeats} interleaved repeats, CPU ms per pass:")
    for mode, t in times.items():
        print(f"  {mode}: min {min(t):.2f}  median {statistics.median(t):.2f}")
    ratios = [a / b for a, b in zip(times["exact"], times["fast"])]
    print(f"  exact / fast: median of per-pair ratios {statistics.median(ratios):.2f}, "
          f"ratio of mins {min(times['exact']) / min(times['fast']):.2f}")
    print(f"  largest |fast - exact| / max|exact| over the linears: {worst:.2e}")


if __name__ == "__main__":
    main()

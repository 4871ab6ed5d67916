"""Engine throughput on the embedded model: Lamina vs transformers' generate, same model, same threads, one run.

Prints the CPU (model, the instruction-set flags that matter, the kernel variant in use), a table of tokens/s for
a single stream and for n = 1, 8, 32, 64 samples of one prompt, the ratio to transformers, and how many KV blocks
the prompt occupies when n = 32 samples share it.

    python benchmarks/engine.py [--threads 2] [--tokens 64] [--ns 1,8,32,64] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from lamina import LLM, SamplingParams
from lamina.engine.kernels import cpu_description

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def lamina_run(llm: LLM, prompt_ids: list[int], n: int, tokens: int) -> float:
    params = SamplingParams(n=n, temperature=0.8, top_p=0.95, seed=0, max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    out = llm.generate(prompt_ids, params)[0]
    elapsed = time.perf_counter() - start
    assert sum(len(c.token_ids) for c in out.outputs) == n * tokens
    return n * tokens / elapsed


def hf_run(model, prompt_ids: list[int], n: int, tokens: int) -> float:
    ids = torch.tensor([prompt_ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8, top_p=0.95,
                             num_return_sequences=n, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.shape == (n, len(prompt_ids) + tokens)
    return n * tokens / elapsed


def prompt_blocks(llm: LLM, prompt_ids: list[int], n: int) -> tuple[int, int]:
    """Distinct KV blocks held by all n samples right after the shared prefill, and the count for one copy."""
    engine = llm.engine
    request_id = engine.add_request(prompt_ids, SamplingParams(n=n, temperature=0.8, max_tokens=2, ignore_eos=True))
    while len(engine.requests[request_id].seqs) < n:
        engine.step()
    used = len({b for s in engine.requests[request_id].seqs for b in s.block_table})
    while engine.has_unfinished_requests():
        engine.step()
    return used, -(-len(prompt_ids) // engine.blocks.block_size)


def plot(results: list[dict], columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in columns if not all(math.isnan(r[c]) for r in results)]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(columns)
    for k, name in enumerate(columns):
        xs = [i + (k - (len(columns) - 1) / 2) * width for i in range(len(results))]
        ax.bar(xs, [r[name] for r in results], width, label=name)
    ax.set_xticks(range(len(results)), [r["workload"] for r in results])
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title("Decode throughput, SmolLM2-135M-Instruct on CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(results: list[dict], columns: list[str], markdown: bool) -> None:
    peer = "transformers"
    header = ["workload", "tokens/sample"] + [f"{c} tok/s" for c in columns] + [f"{c} / {peer}" for c in columns if c != peer]
    lines = [header]
    for r in results:
        line = [r["workload"], str(r["tokens_per_sample"])] + [f"{r[c]:.1f}" for c in columns]
        lines.append(line + [f"{r[c] / r[peer]:.2f}x" for c in columns if c != peer])
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for line in lines[1:]:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per sample for n > 1")
    parser.add_argument("--single-tokens", type=int, default=128, help="tokens for the single-stream row")
    parser.add_argument("--ns", default="1,8,32,64")
    parser.add_argument("--quantization", choices=["int8"], help="also measure Lamina with int8 linears (lossy)")
    parser.add_argument("--skip-torch-only", action="store_true",
                        help="skip Lamina without its native CPU kernels (native_kernels=False: PyTorch ops, fp32 weights)")
    parser.add_argument("--skip-peer", action="store_true", help="measure Lamina only")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine"), help="writes OUT.json, OUT.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ns = [int(x) for x in args.ns.split(",")]

    engines = {"lamina": LLM("default", num_threads=args.threads)}
    if not args.skip_torch_only:
        engines["lamina torch-only"] = LLM("default", num_threads=args.threads, native_kernels=False)
    if args.quantization:
        engines[f"lamina {args.quantization}"] = LLM("default", num_threads=args.threads, quantization=args.quantization)
    cpu = cpu_description()
    print(f"  {cpu}")
    for name, engine in engines.items():
        print(f"  {name}: {engine.engine.linear_backend}")
    llm = engines["lamina"]
    prompt_ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(PROMPT))
    hf = None
    if not args.skip_peer:
        import transformers

        from lamina.engine.loader import resolve_model_path

        transformers.logging.set_verbosity_error()
        path = resolve_model_path("default")
        hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        hf.eval()

    workloads = [("single stream", 1, args.single_tokens)] + [(f"n={n}", n, args.tokens) for n in ns]
    for engine in engines.values():
        lamina_run(engine, prompt_ids, 2, 4)  # warm-up
    if hf is not None:
        hf_run(hf, prompt_ids, 2, 4)
    columns = list(engines) + ["transformers"]
    results = []
    for label, n, tokens in workloads:
        row = {"workload": label, "tokens_per_sample": tokens}
        row |= {name: lamina_run(engine, prompt_ids, n, tokens) for name, engine in engines.items()}
        row["transformers"] = hf_run(hf, prompt_ids, n, tokens) if hf is not None else float("nan")
        results.append(row)
        print("  " + label + ": " + ", ".join(f"{c} {row[c]:.1f} tok/s" for c in columns), flush=True)
    used, one_copy = prompt_blocks(llm, prompt_ids, 32)

    print(f"\nEngine throughput, embedded SmolLM2-135M-Instruct (fp32 compute), {args.threads} threads, "
          f"prompt {len(prompt_ids)} tokens, temperature 0.8, top_p 0.95\n{cpu}")
    print_table(results, columns, args.markdown)
    print(f"KV blocks held by the prompt with n=32 samples: {used} (one copy: {one_copy})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu, "threads": args.threads, "linears": {n: e.engine.linear_backend for n, e in engines.items()},
              "prompt_blocks_n32": used, "prompt_blocks_one_copy": one_copy, "rows": results}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, allow_nan=True))
    plot(results, columns, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

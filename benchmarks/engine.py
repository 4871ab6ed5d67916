"""Engine throughput on a local model (the embedded one by default; `--model gemma3-270m` for Gemma 3): Lamina vs
transformers' generate, same model, same threads, one run.

Prints the CPU (model, the instruction-set flags that matter, the kernel variant in use), a table of tokens/s for
a single stream and for n = 1, 8, 32, 64 samples of one prompt, the ratio to transformers, and how many KV blocks
the prompt occupies when n = 32 samples share it.

    python benchmarks/engine.py [--model NAME] [--threads 2] [--tokens 64] [--ns 1,8,32,64] [--markdown] [--llamacpp PY]
    python benchmarks/engine.py --startup-only [--startup-runs 5]

Start-up (first, in fresh processes; `--startup-runs 0` skips it): `import lamina` and `LLM(model)` timed apart,
cold (an empty panel cache: the native linears' panels are packed and written) and warm (mapped from the cache),
min and median over the runs, and the median time of each phase.

With `--llamacpp PY` (a Python with llama-cpp-python built for this CPU: `bash scripts/llamacpp_peer.sh` makes
.venv-llamacpp) llama.cpp is measured as a peer on the same GGUF, prompt, threads and n, by the reference script
../shared/peers/llamacpp_decode.py (the prompt prefilled once and its KV copied to every sequence, decode only:
it counts the tokens after the first, so its numbers exclude the prefill that Lamina's include).

The single-stream line also gives the achieved memory bandwidth, as gpt-fast does: the bytes of weights one decode
step reads (every linear's stored weights, quantized panels included, and the norms) times tokens/s. Decode steps run
all layers in one native call where the model allows it (the engine line says which decode step runs);
`LAMINA_NATIVE_DECODE=0` forces the Python forward for the whole run, and `--decode-ab` measures the single stream
with the native step and with the Python forward alternately on the same engine (pairs of runs, their ratios).
`--qgemm-ab PAIRS` likewise alternates the block-quantized GEMM's "exact" and opt-in "fast" arithmetic
(kernels/__init__.py, LAMINA_QGEMM; avx512 only) on the single stream, and says whether 64 greedy tokens agree;
`--qgemm-ab-only` measures just that.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from lamina import LLM, SamplingParams
from lamina.engine.kernels import cpu_description

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
PARAGRAPH = ("The museum opens at nine in the morning and closes at six in the evening. Visitors may bring a camera, "
             "but flash photography is not allowed in the painting galleries. The cafe on the ground floor serves "
             "coffee, tea and sandwiches until five. Children under twelve enter free of charge.")
CODE = """\
def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)


def variance(values):
    m = mean(values)
    return sum((value - m) ** 2 for value in values) / len(values)
"""
SPECULATIVE_PROMPTS = {  # label: (does the answer copy the prompt?, the user message)
    "edit a paragraph": (True, "Rewrite this paragraph, replacing 'museum' with 'library':\n\n" + PARAGRAPH),
    "annotate code": (True, "Add type hints to these Python functions and return the whole code:\n\n" + CODE),
    "story (no copy)": (False, PROMPT[0]["content"]),
}


def lamina_run(llm: LLM, prompt_ids: list[int], n: int, tokens: int) -> float:
    params = SamplingParams(n=n, temperature=0.8, top_p=0.95, seed=0, max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    out = llm.generate(prompt_ids, params)[0]
    elapsed = time.perf_counter() - start
    assert sum(len(c.token_ids) for c in out.outputs) == n * tokens
    return n * tokens / elapsed


def weight_bytes_per_token(llm: LLM) -> int:
    """Bytes of weights a single-stream decode step reads: every linear's stored weights (a native linear's panels
    of codes, scales and offsets; a oneDNN or torch linear's fp32 matrix), biases and norms; one embedding row."""
    from lamina.engine.models.block_quant import BlockQuantLinear
    from lamina.engine.models.cpu_linear import BF16Linear, Int8Linear, PackedLinear
    from lamina.engine.models.llama import RMSNorm

    def size(t: torch.Tensor | None) -> int:
        return 0 if t is None else t.numel() * t.element_size()

    total = 0
    model = llm.engine.model
    for module in model.modules():
        if isinstance(module, BlockQuantLinear):
            total += size(module.codes) + size(module.scales) + size(module.offsets) + size(module.bias)
        elif isinstance(module, PackedLinear):
            total += module.out_features * module.in_features * 4 + size(module.bias)
        elif isinstance(module, Int8Linear):
            total += module.out_features * (module.in_features + 2) + size(module.bias)
        elif isinstance(module, BF16Linear):
            total += module.out_features * module.in_features * 2 + size(module.bias)
        elif isinstance(module, torch.nn.Linear):
            total += size(module.weight) + size(module.bias)
        elif isinstance(module, RMSNorm):
            total += size(module.weight)
    embed = model.embed_tokens.weight
    return total + embed.shape[1] * embed.element_size()


def decode_ab(llm: LLM, prompt_ids: list[int], tokens: int, pairs: int) -> tuple[list[float], list[float]]:
    """Single-stream tokens/s with the native decode step and with the Python forward, alternately, `pairs` each."""
    runner = llm.engine.runner
    native_step = runner.native_step
    native, python = [], []
    try:
        for i in range(pairs):
            for which in (("native", "python") if i % 2 == 0 else ("python", "native")):
                runner.native_step = native_step if which == "native" else None
                (native if which == "native" else python).append(lamina_run(llm, prompt_ids, 1, tokens))
    finally:
        runner.native_step = native_step
    return native, python


def qgemm_ab(llm: LLM, prompt_ids: list[int], tokens: int, pairs: int) -> tuple[list[float], list[float], bool]:
    """Single-stream tokens/s with the GEMM's "exact" and "fast" arithmetic, alternately, `pairs` each; and
    whether 64 greedy tokens are the same in both."""
    kernel = llm.engine.kernels
    assert kernel is not None and kernel.isa == "avx512", "the 'fast' GEMM needs the avx512 kernels"
    before = kernel.qgemm_mode()
    exact, fast, greedy = [], [], {}
    try:
        for mode in ("exact", "fast"):
            kernel.set_qgemm_mode(mode)
            out = llm.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))[0]
            greedy[mode] = out.outputs[0].token_ids
        for i in range(pairs):
            for mode in (("exact", "fast") if i % 2 == 0 else ("fast", "exact")):
                kernel.set_qgemm_mode(mode)
                (exact if mode == "exact" else fast).append(lamina_run(llm, prompt_ids, 1, tokens))
    finally:
        kernel.set_qgemm_mode(before)
    return exact, fast, greedy["exact"] == greedy["fast"]


def print_qgemm_ab(llm: LLM, prompt_ids: list[int], tokens: int, pairs: int) -> dict:
    exact, fast, same = qgemm_ab(llm, prompt_ids, tokens, pairs)
    print(f"  single stream, GEMM arithmetic A/B ({pairs} pairs): exact {max(exact):.1f} tok/s best, "
          f"fast {max(fast):.1f} tok/s best; per-pair ratios fast/exact "
          + " ".join(f"{b / a:.2f}" for a, b in zip(exact, fast))
          + f"; 64 greedy tokens {'identical' if same else 'DIFFER'}", flush=True)
    return {"exact": exact, "fast": fast, "greedy_identical": same}


def speculative_rows(llm: LLM, tokens: int, k: int) -> list[dict]:
    """Per prompt: greedy single-stream tokens/s without and with prompt-lookup speculation (k drafts), and the
    drafts accepted. The two outputs must be identical (checked)."""
    rows = []
    for label, (copies, message) in SPECULATIVE_PROMPTS.items():
        prompt_ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": message}]))
        plain = SamplingParams(temperature=0, max_tokens=tokens)
        timed = {}
        for name, params in (("plain", plain), ("speculative", plain.replace(num_speculative_tokens=k))):
            start = time.perf_counter()
            out = llm.generate(prompt_ids, params)[0]
            timed[name] = (len(out.outputs[0].token_ids) / (time.perf_counter() - start), out)
        (base, ref), (fast, spec) = timed["plain"], timed["speculative"]
        assert spec.outputs[0].token_ids == ref.outputs[0].token_ids, f"{label}: speculative output differs"
        rows.append({"prompt": label, "copies": copies, "tokens": len(ref.outputs[0].token_ids), "plain": base,
                     "speculative": fast, "drafted": spec.num_draft_tokens, "accepted": spec.num_accepted_tokens})
    return rows


# Run in a fresh process per start-up: `import lamina` (the engine's import) and `LLM(model)` timed apart, and the
# start-up's phases timed by wrapping the functions that do them (nested: load_model includes the GGUF's parse and
# the tokenizer; the panels include the panel cache's read and check).
STARTUP_CHILD = """
import json, sys, time
start = time.perf_counter()
from lamina import LLM
imported = time.perf_counter()
import lamina.engine.builder as builder, lamina.engine.loader as loader, lamina.engine.loader.gguf as gguf
import lamina.engine.models.panel_cache as panel_cache
phases = {}
def timed(owner, name, label):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - began
    setattr(owner, name, wrapper)
timed(loader, "load_model", "load the GGUF (parse, tokenizer)")
timed(gguf, "tokenizer_from_gguf", "of which the tokenizer")
timed(builder, "native_kernels", "load the kernels")
timed(builder, "use_block_quant_linears", "native linears (panels)")
timed(panel_cache.PanelCache, "__init__", "of which the panel cache read + CRC")
timed(gguf, "dequantize", "dequantize (embedding, norms)")
llm = LLM(sys.argv[1], num_threads=int(sys.argv[2]))
built = time.perf_counter()
print(json.dumps({"import": imported - start, "llm": built - imported, "panels": llm.engine.panel_cache,
                  "phases": phases}))
"""


PHASES = ["load the GGUF (parse, tokenizer)", "of which the tokenizer", "load the kernels", "native linears (panels)",
          "of which the panel cache read + CRC", "dequantize (embedding, norms)"]


def startup_runs(model: str, threads: int, runs: int) -> dict:
    """Start-up in fresh processes, `runs` times each: cold (an empty panel cache: the panels are packed and
    written) and warm (mapped from the cache), alternating; the kernels are built and the linear choices timed by a
    first start-up that is not counted. Seconds per run."""
    import shutil
    import sys

    results: dict[str, list[dict]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="lamina-startup-") as folder:
        env = os.environ | {"LAMINA_PANEL_CACHE": folder, "OMP_NUM_THREADS": str(threads)}

        def child() -> dict:
            out = subprocess.run([sys.executable, "-c", STARTUP_CHILD, model, str(threads)], env=env,
                                 capture_output=True, text=True, check=True, timeout=900)
            return json.loads(out.stdout.strip().splitlines()[-1])

        child()
        for _ in range(runs):
            for entry in Path(folder).iterdir():
                entry.unlink() if entry.is_file() else shutil.rmtree(entry)
            results["cold"].append(child())
            results["warm"].append(child())
    return results


def print_startup(results: dict, model: str, threads: int, markdown: bool) -> None:
    runs = len(results["cold"])
    print(f"\nStart-up of LLM({model!r}), {threads} threads, {runs} fresh processes each (seconds, min / median)")
    lines = [["start-up", "import lamina (LLM)", "LLM(...)", "panels"]]
    for kind, label in (("cold", "cold (no panel cache)"), ("warm", "warm (panels cached)")):
        rows = results[kind]
        cells = [f"{min(r[key] for r in rows):.3f} / {statistics.median(r[key] for r in rows):.3f}"
                 for key in ("import", "llm")]
        lines.append([label, *cells, rows[-1]["panels"]])
    print_lines(lines, markdown)
    phases = list(dict.fromkeys(PHASES + [p for kind in results.values() for r in kind for p in r["phases"]]))
    lines = [["phase of LLM(...) (median s)", "cold", "warm"]]
    for phase in phases:
        lines.append([phase] + [f"{statistics.median(r['phases'].get(phase, 0.0) for r in results[k]):.3f}"
                                for k in ("cold", "warm")])
    print_lines(lines, markdown)


def print_speculative(rows: list[dict], k: int, markdown: bool) -> None:
    header = ["prompt", "tokens", "plain tok/s", f"speculative k={k} tok/s", "speedup", "drafts accepted"]
    lines = [header] + [[r["prompt"], str(r["tokens"]), f"{r['plain']:.1f}", f"{r['speculative']:.1f}",
                         f"{r['speculative'] / r['plain']:.2f}x", f"{r['accepted']}/{r['drafted']}"] for r in rows]
    print_lines(lines, markdown)


def hf_run(model, prompt_ids: list[int], n: int, tokens: int) -> float:
    ids = torch.tensor([prompt_ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8, top_p=0.95,
                             num_return_sequences=n, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.shape == (n, len(prompt_ids) + tokens)
    return n * tokens / elapsed


PEER_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "llamacpp_decode.py"


def llamacpp_runs(python: str, model: str, prompt_ids: list[int], threads: int, tokens: int,
                  ns: list[int]) -> dict[int, float]:
    """tokens/s per n from llama.cpp (decode only), run by `python` in its own process after Lamina is done."""
    from lamina.engine.loader import resolve_model_path

    if not PEER_SCRIPT.is_file():
        raise SystemExit(f"--llamacpp: the peer script {PEER_SCRIPT} is missing (it lives in shared/peers/)")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompt_ids, f)
    cmd = [python, str(PEER_SCRIPT), str(resolve_model_path(model)), f.name, str(threads), str(tokens),
           ",".join(map(str, ns))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"--llamacpp {python}: the peer failed: {getattr(exc, 'stderr', '') or exc}") from None
    finally:
        os.unlink(f.name)
    return {int(n): float(v) for n, v in (line.split() for line in out.splitlines() if line.strip())}


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


def plot(results: list[dict], columns: list[str], path: Path, title: str = "SmolLM2-135M-Instruct") -> None:
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
    ax.set_title(f"Decode throughput, {title} on CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


PEERS = ("transformers", "llama.cpp")


def print_table(results: list[dict], columns: list[str], markdown: bool) -> None:
    """tokens/s per column, then each Lamina column's ratio to each peer measured."""
    peers = [c for c in columns if c in PEERS]
    ratios = [(c, p) for p in peers for c in columns if c not in PEERS]
    header = ["workload", "tokens/sample"] + [f"{c} tok/s" for c in columns] + [f"{c} / {p}" for c, p in ratios]
    lines = [header]
    for r in results:
        line = [r["workload"], str(r["tokens_per_sample"])] + [f"{r[c]:.1f}" for c in columns]
        lines.append(line + [f"{r[c] / r[p]:.2f}x" for c, p in ratios])
    print_lines(lines, markdown)


def print_lines(lines: list[list[str]], markdown: bool) -> None:
    """A table (header first) as Markdown or as right-aligned columns."""
    header = lines[0]
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
    parser.add_argument("--model", default="default", help="a local model name (default, gemma3-270m) or .gguf file")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per sample for n > 1")
    parser.add_argument("--single-tokens", type=int, default=128, help="tokens for the single-stream row")
    parser.add_argument("--ns", default="1,8,32,64")
    parser.add_argument("--quantization", choices=["int8", "bf16"],
                        help="also measure Lamina with int8 or bf16 linears (lossy; agreement: benchmarks/precision.py)")
    parser.add_argument("--skip-torch-only", action="store_true",
                        help="skip Lamina without its native CPU kernels (native_kernels=False: PyTorch ops, fp32 weights)")
    parser.add_argument("--skip-peer", action="store_true", help="skip transformers")
    parser.add_argument("--llamacpp", metavar="PYTHON", help="also measure llama.cpp with this Python "
                        "(llama-cpp-python built for this CPU; scripts/llamacpp_peer.sh makes .venv-llamacpp)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--speculative-tokens", type=int, default=4, help="draft tokens per step, speculative case")
    parser.add_argument("--speculative-max-tokens", type=int, default=128, help="tokens per speculative run")
    parser.add_argument("--speculative-only", action="store_true", help="measure only the speculative case")
    parser.add_argument("--decode-ab", type=int, default=0, metavar="PAIRS",
                        help="also measure the single stream with the native decode step and with the Python forward, "
                             "alternately, PAIRS runs each (0: skip)")
    parser.add_argument("--qgemm-ab", type=int, default=0, metavar="PAIRS",
                        help="also measure the single stream with the GEMM's exact and fast arithmetic, alternately "
                             "(avx512 only; 0: skip)")
    parser.add_argument("--qgemm-ab-only", action="store_true", help="measure only the --qgemm-ab case")
    parser.add_argument("--startup-runs", type=int, default=5, help="fresh processes per start-up case (0: skip)")
    parser.add_argument("--startup-only", action="store_true", help="measure only the start-up")
    parser.add_argument("--out", type=Path, help="writes OUT.json, OUT.png (default benchmarks/results/engine, "
                        "engine-MODEL for another model)")
    args = parser.parse_args()
    suffix = "" if args.model == "default" else "-" + Path(args.model).stem
    args.out = args.out or Path(f"benchmarks/results/engine{suffix}")
    torch.set_num_threads(args.threads)
    ns = [int(x) for x in args.ns.split(",")]

    measure_startup = args.startup_runs > 0 and not args.speculative_only and not args.qgemm_ab_only
    startup = startup_runs(args.model, args.threads, args.startup_runs) if measure_startup else None
    if startup is not None and args.startup_only:
        print(f"  {cpu_description()}")
        print_startup(startup, args.model, args.threads, args.markdown)
        return
    engines = {"lamina": LLM(args.model, num_threads=args.threads)}
    if args.speculative_only:
        lamina_run(engines["lamina"], [1, 2, 3], 1, 4)  # warm-up
        rows = speculative_rows(engines["lamina"], args.speculative_max_tokens, args.speculative_tokens)
        print(f"\nSpeculative decoding (prompt lookup), single stream, greedy, {args.threads} threads\n{cpu_description()}")
        print_speculative(rows, args.speculative_tokens, args.markdown)
        return
    if args.qgemm_ab_only:
        llm = engines["lamina"]
        prompt_ids = llm.tokenizer.encode_prompt(llm.tokenizer.apply_chat_template(PROMPT))
        lamina_run(llm, prompt_ids, 1, 4)  # warm-up
        print(f"  {cpu_description()}\n  lamina: {llm.engine.linear_backend}; {llm.engine.runner.decode_path}")
        print_qgemm_ab(llm, prompt_ids, args.single_tokens, args.qgemm_ab or 5)
        return
    if not args.skip_torch_only:
        engines["lamina torch-only"] = LLM(args.model, num_threads=args.threads, native_kernels=False)
    if args.quantization:
        engines[f"lamina {args.quantization}"] = LLM(args.model, num_threads=args.threads, quantization=args.quantization)
    cpu = cpu_description()
    print(f"  {cpu}")
    for name, engine in engines.items():
        print(f"  {name}: {engine.engine.linear_backend}; {engine.engine.runner.decode_path}")
    weight_bytes = {name: weight_bytes_per_token(engine) for name, engine in engines.items()}
    llm = engines["lamina"]
    prompt_ids = llm.tokenizer.encode_prompt(llm.tokenizer.apply_chat_template(PROMPT))
    hf = None
    if not args.skip_peer:
        import transformers

        from lamina.engine.loader import resolve_model_path

        transformers.logging.set_verbosity_error()
        path = resolve_model_path(args.model)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        hf.eval()

    def bandwidth(column: str, rate: float) -> str:
        """' (X GB/s of weights)' for a Lamina column: weight bytes per decode step times tokens/s."""
        return f" ({weight_bytes[column] * rate / 1e9:.1f} GB/s of weights)" if column in weight_bytes else ""

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
        print("  " + label + ": " + ", ".join(f"{c} {row[c]:.1f} tok/s" + bandwidth(c, row[c]) * (n == 1)
                                              for c in columns), flush=True)
    ab = None
    if args.decode_ab:
        native, python = decode_ab(llm, prompt_ids, args.single_tokens, args.decode_ab)
        ab = {"native": native, "python": python}
        print(f"  single stream, decode step A/B ({args.decode_ab} pairs): native {max(native):.1f} tok/s best, "
              f"Python forward {max(python):.1f} tok/s best; per-pair ratios "
              + " ".join(f"{a / b:.2f}" for a, b in zip(native, python)), flush=True)
    qgemm = print_qgemm_ab(llm, prompt_ids, args.single_tokens, args.qgemm_ab) if args.qgemm_ab else None
    used, one_copy = prompt_blocks(llm, prompt_ids, 32)
    speculative = speculative_rows(llm, args.speculative_max_tokens, args.speculative_tokens)
    linears = {name: e.engine.linear_backend for name, e in engines.items()}
    decode_paths = {name: e.engine.runner.decode_path for name, e in engines.items()}
    if args.llamacpp:
        del engines, llm, hf  # the peer runs alone on the cores
        peer = llamacpp_runs(args.llamacpp, args.model, prompt_ids, args.threads, args.tokens, [1, *ns])
        single = llamacpp_runs(args.llamacpp, args.model, prompt_ids, args.threads, args.single_tokens, [1])
        for row, (label, n, _) in zip(results, workloads):
            row["llama.cpp"] = single[1] if label == "single stream" else peer[n]
        columns.append("llama.cpp")

    title = "embedded SmolLM2-135M-Instruct" if args.model == "default" else args.model
    print(f"\nEngine throughput, {title} (fp32 compute), {args.threads} threads, "
          f"prompt {len(prompt_ids)} tokens, temperature 0.8, top_p 0.95\n{cpu}")
    print_table(results, columns, args.markdown)
    single = results[0]
    print("Single stream, weights read per decode step and achieved bandwidth: " + "; ".join(
        f"{name} {weight_bytes[name] / 1e6:.1f} MB/token, {weight_bytes[name] * single[name] / 1e9:.1f} GB/s"
        for name in weight_bytes))
    print(f"KV blocks held by the prompt with n=32 samples: {used} (one copy: {one_copy})")
    print(f"\nSpeculative decoding (prompt lookup), single stream, greedy, {args.threads} threads")
    print_speculative(speculative, args.speculative_tokens, args.markdown)
    if startup is not None:
        print_startup(startup, args.model, args.threads, args.markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "cpu": cpu, "threads": args.threads, "linears": linears,
              "decode_paths": decode_paths, "weight_bytes_per_token": weight_bytes, "decode_ab": ab, "qgemm_ab": qgemm,
              "prompt_blocks_n32": used, "prompt_blocks_one_copy": one_copy, "rows": results,
              "speculative": speculative, "startup": startup}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, allow_nan=True))
    plot(results, columns, args.out.with_suffix(".png"), title)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""Loader and detokenizer speed against transformers, measured in the same run.

    python benchmarks/loader.py [--model default] [--repeats 3] [--tokens 2000]

Rows: loading the GGUF (weights + config + tokenizer) with Lamina vs transformers' GGUF path;
streaming detokenisation of N tokens with Lamina's windowed Detokenizer vs decoding the whole sequence per token.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()

    import torch
    import transformers

    from lamina.engine.loader import load_model, resolve_model_path

    transformers.logging.set_verbosity_error()
    path = resolve_model_path(args.model)

    def hf_load() -> None:
        transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    lamina_load = best_of(args.repeats, lambda: load_model(path))
    hf_time = best_of(max(1, args.repeats - 2), hf_load)

    tok = load_model(path).tokenizer
    text = "Streaming text with emoji 😀, accents café, CJK 日本語 and code `x = f(y)`.\n"
    ids = (tok.encode(text) * (args.tokens // len(tok.encode(text)) + 1))[: args.tokens]

    def windowed() -> None:
        detok = tok.detokenizer()
        for i in ids:
            detok.add(i)

    def full_decode() -> None:
        for n in range(1, len(ids) + 1):
            tok.decode(ids[:n])

    det_time = best_of(args.repeats, windowed)
    naive_time = best_of(1, full_decode)

    rows = [
        (f"load {path.name}", "lamina load_model", lamina_load, "transformers GGUF model+tokenizer", hf_time),
        (f"detokenize {len(ids)} tokens", "lamina Detokenizer", det_time, "decode(all ids) per token", naive_time),
    ]
    print(f"{'task':<44} {'lamina':>10} {'peer':>10} {'speedup':>8}  peer")
    for task, _, ours, peer_name, peer in rows:
        print(f"{task:<44} {ours:>9.3f}s {peer:>9.3f}s {peer / ours:>7.1f}x  {peer_name}")
    print(f"detokenizer: {det_time / len(ids) * 1e6:.1f} µs/token")


if __name__ == "__main__":
    main()

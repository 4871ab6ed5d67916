"""Agreement of the opt-in lossy linears (`quantization="int8"`, `"bf16"`) with the exact fp32 engine, teacher-forced.

One fixed text (prose and code, below) is scored as a prompt by each engine (`prompt_logprobs`, nothing generated);
the full next-token logits at every position are captured from the model's `compute_logits`. Printed per option:
top-1 agreement (the share of positions whose argmax equals fp32's), mean KL(fp32 || option) in nats over the
positions, and the share of positions where fp32's argmax is the text's next token (for scale).

    python benchmarks/precision.py [--model NAME] [--threads 1] [--quantization int8,bf16]
"""
from __future__ import annotations

import argparse
import os

import torch

from lamina import LLM, SamplingParams

TEXT = """The river rose slowly through the night, and by morning the lower fields were under a sheet of brown water.
The farmers had moved their animals to the hill the day before, but the barns near the ford could not be saved. When
the sun came up, the village gathered on the bridge to watch the current carry fence posts, baskets and a small boat
that nobody claimed. The miller said the water had not been this high since his grandfather's time, and the schoolmaster
wrote the date and the height of the flood on the wall of the school, beside the marks of older floods.

def merge_sorted(a: list[int], b: list[int]) -> list[int]:
    \"\"\"Merge two sorted lists into one sorted list.\"\"\"
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]

Question: A train travels 120 kilometres in 1.5 hours. What is its average speed?
Answer: The average speed is the distance divided by the time: 120 / 1.5 = 80 kilometres per hour. So the answer is 80.
"""


def teacher_forced_logits(llm: LLM, token_ids: list[int]) -> torch.Tensor:
    """[len(token_ids) - 1, vocab] fp32 logits: row p predicts token p + 1 (one prefill chunk, prompt_logprobs)."""
    model = llm.engine.model
    captured: list[torch.Tensor] = []
    original = model.compute_logits

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        out = original(hidden)
        captured.append(out.float().clone())
        return out

    model.compute_logits = capture
    try:
        llm.generate([token_ids], SamplingParams(max_tokens=1, prompt_logprobs=1))
    finally:
        del model.compute_logits
    rows = max(captured, key=len)
    if len(rows) < len(token_ids) - 1:
        raise SystemExit(f"expected {len(token_ids) - 1} scored rows in one chunk, got {[len(c) for c in captured]}")
    return rows[: len(token_ids) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quantization", default="int8,bf16", help="comma-separated options to compare with fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    exact = LLM(args.model, num_threads=args.threads)
    token_ids = exact.tokenizer.encode_prompt(TEXT)
    ref = teacher_forced_logits(exact, token_ids)
    ref_logp = torch.log_softmax(ref, dim=-1)
    targets = torch.tensor(token_ids[1:])
    print(f"model {args.model}, {len(token_ids)} tokens teacher-forced, {args.threads} threads; "
          f"reference: fp32 ({exact.engine.linear_backend})")
    print(f"  fp32 argmax = next token of the text: {float((ref.argmax(-1) == targets).float().mean()) * 100:.1f}%")
    for option in args.quantization.split(","):
        llm = LLM(args.model, num_threads=args.threads, quantization=option)
        logits = teacher_forced_logits(llm, token_ids)
        logp = torch.log_softmax(logits, dim=-1)
        agree = float((logits.argmax(-1) == ref.argmax(-1)).float().mean()) * 100
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        print(f"  {option}: top-1 agreement {agree:.1f}%, KL(fp32||{option}) mean {float(kl.mean()):.4f} "
              f"max {float(kl.max()):.4f} nats ({llm.engine.linear_backend})")
        del llm


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

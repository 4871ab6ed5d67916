"""`lamina generate`, `lamina chat` and `lamina bench`: the engine from the command line."""
from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Iterable
from pathlib import Path

from lamina.engine.sampling_params import SAMPLING_FIELDS, SamplingParams


# SamplingParams fields given as flags (all but logprobs, which these commands do not print, and structured_outputs)
CLI_SAMPLING_FIELDS = tuple(name for name in SAMPLING_FIELDS
                            if name not in ("logprobs", "prompt_logprobs", "structured_outputs"))


def add_sampling_arguments(parser: argparse.ArgumentParser, names: Iterable[str] = CLI_SAMPLING_FIELDS,
                           title: str = "sampling (vLLM's SamplingParams)", **defaults: object) -> None:
    """One flag per SamplingParams field in `names` (--top-p for top_p; -n for n), typed, with its help; `defaults`
    overrides SamplingParams' defaults for this command. Lists are repeatable flags; bools are switches."""
    group = parser.add_argument_group(title)
    for name in names:
        info = SAMPLING_FIELDS[name]
        default = defaults.get(name, info.default)
        flag = f"-{name}" if len(name) == 1 else "--" + name.replace("_", "-")
        if info.kind is bool:
            group.add_argument(flag, action="store_true", help=info.help)
        elif typing.get_origin(info.kind) is list:
            (item,) = typing.get_args(info.kind)
            group.add_argument(flag, action="append", type=item, default=[], help=f"{info.help} (repeatable)")
        else:
            scalar = next(t for t in typing.get_args(info.kind) or (info.kind,) if t is not type(None))
            group.add_argument(flag, type=scalar, default=default,
                               help=f"{info.help}; {info.expected} (default: {default})")


def sampling_params(args: argparse.Namespace, names: Iterable[str] = CLI_SAMPLING_FIELDS) -> SamplingParams:
    """SamplingParams from the flags add_sampling_arguments added for `names` (InvalidRequestError names a bad value)."""
    return SamplingParams(**{name: getattr(args, name) for name in names})


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model name (default, smollm2-135m, gemma3-270m), .gguf file or HF folder")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="complete prompts with a local model")
    gen.add_argument("prompts", nargs="+", help="prompt text (use - to read one prompt from stdin)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    _engine_args(gen)
    add_sampling_arguments(gen, temperature=0.7, max_tokens=128)
    gen.set_defaults(func=generate_command)

    chat = sub.add_parser("chat", help="chat with a local model (interactive, or one message with --message)")
    chat.add_argument("--message", "-m", help="send this one message, print the reply and exit")
    chat.add_argument("--system", help="system message")
    _engine_args(chat)
    add_sampling_arguments(chat, temperature=0.7, max_tokens=256)
    chat.set_defaults(func=chat_command)

    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (engine, loader, serve, architectures, eval_scaling)")
    bench.add_argument("name", nargs="?", default="engine")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    bench.set_defaults(func=bench_command)


def _llm(args: argparse.Namespace):
    from lamina.engine.engine import LLM

    return LLM(args.model, num_threads=args.threads)


def generate_command(args: argparse.Namespace) -> int:
    prompts = [sys.stdin.read() if p == "-" else p for p in args.prompts]
    params = sampling_params(args)
    llm = _llm(args)
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=len(prompts) > 1)
    else:
        outs = llm.generate(prompts, params, use_tqdm=len(prompts) > 1)
    for out in outs:
        for completion in out.outputs:
            label = f"[{out.request_id} #{completion.index}]" if len(prompts) > 1 or params.n > 1 else ""
            if label:
                print(label, file=sys.stderr)
            print(completion.text if args.chat else (out.prompt or "") + completion.text)
        tokens = sum(len(c.token_ids) for c in out.outputs)
        print(f"usage: prompt_tokens={len(out.prompt_token_ids)} completion_tokens={tokens} "
              f"cached_prompt_tokens={out.num_cached_tokens}", file=sys.stderr)
    return 0


def chat_command(args: argparse.Namespace) -> int:
    params = sampling_params(args)  # a bad value fails before the model loads
    llm = _llm(args)
    history = [{"role": "system", "content": args.system}] if args.system else []
    if args.message is not None:
        history.append({"role": "user", "content": args.message})
        print(llm.chat(history, params)[0].outputs[0].text.strip())
        return 0
    print("lamina chat: empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        if not line:
            return 0
        history.append({"role": "user", "content": line})
        reply = llm.chat(history, params)[0].outputs[0].text.strip()
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")


def bench_command(args: argparse.Namespace) -> int:
    import runpy

    from lamina.errors import LaminaError

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    script = root / f"{args.name}.py"
    if not script.exists():
        known = ", ".join(sorted(p.stem for p in root.glob("*.py"))) or "none"
        raise LaminaError(f"no benchmark {args.name!r} in {root}; known: {known}")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0

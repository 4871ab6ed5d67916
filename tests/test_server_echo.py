"""`/v1/completions` echo and prompt logprobs, as vLLM serves them and as lm-evaluation-harness's `local-completions`
asks for them (its loglikelihood request: token-id prompt = context + continuation, `echo: true, logprobs: 1,
max_tokens: 1, temperature: 0`, then `token_logprobs[ctxlen:-1]`)."""
from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from lamina import SamplingParams
from tests.serving import post, serve

pytestmark = pytest.mark.slow  # a `lamina serve` of the real model

CONTEXT = "Question: What is the capital of France?\nAnswer:"
CHOICES = [" Paris", " London", " a large purple elephant"]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serve("--model", "default", "--kv-cache-memory-gb", "0.25") as url:
        yield url


def harness_loglikelihood(choice: dict, ctxlen: int) -> tuple[float, bool]:
    """lm-evaluation-harness 0.4.13 `LocalCompletionsAPI.parse_logprobs`, verbatim in substance."""
    lps = choice["logprobs"]
    tokens = lps["token_logprobs"][ctxlen:-1]
    tops = lps["top_logprobs"][ctxlen:-1]
    return sum(tokens), all(tok == max(top.values()) for tok, top in zip(tokens, tops))


def test_harness_loglikelihood_request_matches_the_engine(base, real_llm):
    tok = real_llm.tokenizer
    ctx = tok.encode(CONTEXT)
    prompts = [ctx + tok.encode(c) for c in CHOICES]
    r = post(base, "/v1/completions", prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0, seed=1234)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    scores = [real_llm.generate(p, SamplingParams(prompt_logprobs=1, max_tokens=0))[0].prompt_logprobs for p in prompts]
    results = []
    for prompt, choice, direct in zip(prompts, choices, scores):
        assert len(choice["logprobs"]["tokens"]) == len(prompt) + 1  # the prompt, then the one generated token
        got, greedy = harness_loglikelihood(choice, len(ctx))
        want = sum(lp.logprob for lp in direct[len(ctx):])
        assert got == pytest.approx(want, abs=1e-3)
        assert greedy == all(next(iter(lp.top)) == lp.token_id for lp in direct[len(ctx):])
        results.append(got)
    assert results[0] == max(results)  # the model prefers Paris
    assert results[2] == min(results)


def test_echo_with_max_tokens_zero_is_the_scored_prompt(base):
    r = post(base, "/v1/completions", prompt=CONTEXT, echo=True, logprobs=2, max_tokens=0)
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    lps = choice["logprobs"]
    assert choice["text"] == CONTEXT and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
    assert all(v <= 0 for v in lps["token_logprobs"][1:])
    assert all(len(top) == 2 for top in lps["top_logprobs"][1:])
    assert "".join(lps["tokens"]).replace("Ġ", " ").replace("Ċ", "\n") == CONTEXT
    offsets = lps["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and len(offsets) == len(lps["tokens"])


def test_echo_prepends_the_prompt_to_the_completion(base):
    plain = post(base, "/v1/completions", prompt=CONTEXT, max_tokens=4, temperature=0, logprobs=0).json()["choices"][0]
    echoed = post(base, "/v1/completions", prompt=CONTEXT, max_tokens=4, temperature=0, logprobs=0,
                  echo=True).json()["choices"][0]
    assert echoed["text"] == CONTEXT + plain["text"]
    n_prompt = len(echoed["logprobs"]["tokens"]) - len(plain["logprobs"]["tokens"])
    assert echoed["logprobs"]["tokens"][n_prompt:] == plain["logprobs"]["tokens"]
    assert echoed["logprobs"]["token_logprobs"][n_prompt:] == pytest.approx(plain["logprobs"]["token_logprobs"])
    assert echoed["logprobs"]["text_offset"][n_prompt] == len(CONTEXT)
    no_logprobs = post(base, "/v1/completions", prompt=CONTEXT, max_tokens=4, temperature=0, echo=True).json()
    assert no_logprobs["choices"][0]["text"] == CONTEXT + plain["text"]
    assert no_logprobs["choices"][0]["logprobs"] is None
    streamed = httpx.post(base + "/v1/completions", timeout=120, json={
        "model": "default", "prompt": CONTEXT, "max_tokens": 4, "temperature": 0, "echo": True, "stream": True})
    texts = [c["text"] for line in streamed.text.splitlines() if line.startswith("data: {")
             for c in json.loads(line[6:])["choices"]]
    assert "".join(texts) == CONTEXT + plain["text"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "echo": True}, "echo"),
])
def test_refused_echo_and_max_tokens_zero(base, path, body, param):
    r = post(base, path, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


LM_EVAL_TASK = """task: lamina_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
"""


def test_lm_evaluation_harness_runs_a_multiple_choice_task(base, tmp_path):
    """lm-evaluation-harness itself (`local-completions`, echo + logprobs requests) on a local 8-question task."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("lm_eval", reason="lm-eval is in the test extra (pip install -e '.[test]')")
    import transformers

    from lamina.engine.loader import resolve_model_path

    gguf = resolve_model_path("default")  # the served model's tokenizer, as lm-eval's tokenizer= wants a folder
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp_path / "tok")
    data = Path(__file__).parent / "data" / "lm_eval" / "capitals.jsonl"
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "capitals.yaml").write_text(LM_EVAL_TASK.format(data=data))
    args = (f"model=default,base_url={base}/v1/completions,tokenizer={tmp_path / 'tok'},num_concurrent=1,"
            "max_retries=1,tokenized_requests=True")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
                           "--tasks", "lamina_capitals", "--include_path", str(tmp_path / "task"),
                           "--output_path", str(tmp_path / "out")], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = (tmp_path / "out").rglob("results_*.json")
    acc = json.loads(result.read_text())["results"]["lamina_capitals"]["acc,none"]
    assert acc >= 0.75  # the embedded model gets these easy questions right (8/8 when first run)

"""program: sampled programs run in the sandbox; what each prints last is its answer; failures answer nothing."""
from __future__ import annotations

import asyncio

import pytest

from lamina.techniques.program import printed_answer

from tests.archs import run_spec
from tests.scripted import ScriptedBackend

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
PROGRAMS = {
    "right": "```python\nx = 6 * 7\nprint('thinking...')\nprint(x)\n\n```",
    "crash": "```python\nprint(1 / 0)\n```",
    "loop": "```python\nwhile True:\n    pass\n```",
    "silent": "```python\nx = 6 * 7\n```",
    "unfenced": "print(40 + 2)",
    "wrong": "```python\nprint(6 + 7)\n```",
    "bomb": "```python\nx = bytearray(1024**3)\nprint(42)\n```",
}


def run(names, layers=(), **program):
    backend = ScriptedBackend({"Write a short Python program": [PROGRAMS[n] for n in names]})
    spec = {"name": "pal", "models": {"m": {"model": "scripted"}},
            "layers": [[{"type": "program", "samples": len(names), "timeout_s": 1, "name": "pal", **program}],
                       *layers]}
    return run_spec(spec, QUESTION, backends={"m": backend}), backend


def test_each_program_s_last_printed_line_is_its_answer_and_failures_answer_nothing():
    result, backend = run(["crash", "right", "loop", "silent", "unfenced"])
    assert "Question: What is 6 * 7?" in backend.calls[0].prompt
    assert [(c.text, c.answer) for c in result.final] == [("42", "42"), ("42", "42"), ("", None), ("", None),
                                                          ("", None)]
    errors = {e["candidate"]: e["error"] for e in result.trace if e.get("fallback") == "program failed"}
    assert set(errors) == {0, 2, 3}
    assert "ZeroDivisionError" in errors[0] and errors[2] == "timeout" and errors[3] == "printed nothing"


def test_a_vote_counts_the_executed_answers_not_the_numbers_in_the_code():
    result, _ = run(["wrong", "crash", "right", "unfenced", "loop"], [[{"type": "vote", "extract": "number",
                                                                          "keep": "all"}]])
    assert [c.answer for c in result.final] == ["42", "42", "13", None, None]
    assert result.answer == "42"


def test_a_program_over_the_spec_s_memory_limit_answers_nothing():
    result, _ = run(["bomb", "right"], memory_mb=128)
    assert [c.answer for c in result.final] == ["42", None]
    errors = [e["error"] for e in result.trace if e.get("fallback") == "program failed"]
    assert errors == ["memory limit"]


def test_the_prompt_template_and_sampling_fields_are_the_spec_s():
    _, backend = run(["right"], prompt="Solve {query} with Python. Write a short Python program.", temperature=0.2,
                     examples=[])
    assert backend.calls[0].prompt == "Solve What is 6 * 7? with Python. Write a short Python program."
    assert backend.calls[0].params.temperature == 0.2


def test_few_shot_examples_are_turns_before_the_question():
    """PAL's prompt: each example is the user template on its question, then the program as the assistant's reply."""
    from lamina.techniques.program import PROGRAM_EXAMPLES

    _, backend = run(["right"], examples=[["How many legs do 3 cats have?", "print(3 * 4)\n"]])
    messages = backend.calls[0].messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "Question: How many legs do 3 cats have?" in messages[0]["content"]
    assert messages[1]["content"] == "```python\nprint(3 * 4)\n```"
    assert "Question: What is 6 * 7?" in messages[2]["content"]
    _, backend = run(["right"])  # the default: PAL's examples, one turn pair each
    messages = backend.calls[0].messages
    assert len(messages) == 2 * len(PROGRAM_EXAMPLES) + 1 and messages[-1]["content"].count("What is 6 * 7?") == 1
    assert messages[1]["content"] == f"```python\n{PROGRAM_EXAMPLES[0][1]}\n```"


@pytest.mark.parametrize("stdout,answer", [("a\n\n 42 \n\n", "42"), ("", None), ("  \n", None)])
def test_printed_answer(stdout, answer):
    assert printed_answer(stdout) == answer


@pytest.mark.slow
def test_program_vote_on_the_real_model():
    """The example architecture end to end: the embedded model's programs executed, the vote on what they print."""
    from lamina.architecture import Architecture

    arch = Architecture.from_file("examples/architectures/program_vote.yaml", cache=False)

    async def go():
        try:
            return await arch.run("What is 12 + 30?")
        finally:
            await arch.aclose()

    result = asyncio.run(go())
    programs = result.layers[0].candidates
    assert len(programs) == 8 and all(c.token_ids for c in programs)
    executed = [c for c in programs if c.answer is not None]
    assert all(c.text == c.answer for c in executed) and all(c.text == "" for c in programs if c.answer is None)
    if executed:  # the vote picked one of the executed answers
        assert result.answer in {c.text for c in executed}

"""Answer extraction: \\boxed{}, answer phrases, last number, code blocks, choices, grids."""
from __future__ import annotations

import pytest

from lamina.answers.extract import (extract, extract_boxed, extract_choice, extract_code, extract_grid, extract_number,
                                  extract_phrase)


@pytest.mark.parametrize("text, want", [
    (r"so the result is \boxed{42}.", "42"),
    (r"\boxed{\frac{1}{2}} then later \boxed{x^{2}+1}", "x^{2}+1"),
    (r"\fbox{7}", "7"),
    (r"\boxed{unclosed", None),
    ("no box here", None),
])
def test_boxed(text, want):
    assert extract_boxed(text) == want


@pytest.mark.parametrize("text, want", [
    ("Let me think. The answer is 17.", "17"),
    ("The final answer is: **3.5** apples", "3.5 apples"),
    ("Answer: B\nbecause reasons", "B"),
    ("work...\n#### 1,234", "1,234"),
    ("The answer is \\boxed{9}.", "9"),
    ("I have no idea.", None),
])
def test_phrase(text, want):
    assert extract_phrase(text) == want


@pytest.mark.parametrize("text, want", [
    ("7 + 5 = 12", "12"),
    ("She pays $1,250.50 in total", "1250.50"),
    ("It drops to -3 degrees, not 4.", "4"),
    ("from 10 to −8", "-8"),
    ("a ratio of 3/4", "3/4"),
    ("version v2 has none", None),
    ("nothing", None),
])
def test_last_number(text, want):
    assert extract_number(text) == want


def test_number_mode_prefers_the_stated_answer_over_trailing_numbers():
    text = "The answer is 12. I checked it 3 times."
    assert extract(text, "number") == "12"
    assert extract("work: 2 + 3 = 5, \\boxed{5} (step 7)", "number") == "5"


def test_auto_chain():
    assert extract("x \\boxed{8} y 9") == "8"
    assert extract("The answer is 6. Step 9") == "6"
    assert extract("It is 4 then 5") == "5"
    assert extract("  plain words ") == "plain words"
    assert extract("   ") is None


def test_code_blocks():
    text = "Here:\n```python\ndef f(x):\n    return x + 1\n```\nand usage\n```\nf(2)\n```"
    assert extract_code(text) == "def f(x):\n    return x + 1"
    two = "```python\ndef a():\n    pass\n```\nbetter:\n```py\ndef b():\n    return 1\n```"
    assert extract_code(two) == "def b():\n    return 1"
    assert extract_code("```python\ndef g(x):\n    return x") == "def g(x):\n    return x"  # unterminated fence
    assert extract_code("def h(y):\n    return y * 2") == "def h(y):\n    return y * 2"
    assert extract_code("No code at all.") is None
    assert extract_code("```js\nconsole.log(1)\n```") == "console.log(1)"  # no Python at all: the block as is
    assert extract_code("```python\ndef broken(x) return\n```") == "def broken(x) return"  # fails with its error


DOUBLE = "def double(x):\n    return 2 * x"
# (shape, reply, the program that must come out); every program must compile and pass `assert double(3) == 6`
CODE_SHAPES = [
    ("fenced python", f"Sure!\n```python\n{DOUBLE}\n```\nThis doubles x.", DOUBLE),
    ("fenced py", f"```py\n{DOUBLE}\n```", DOUBLE),
    ("fenced, no language", f"```\n{DOUBLE}\n```", DOUBLE),
    ("tilde fence", f"~~~python\n{DOUBLE}\n~~~", DOUBLE),
    ("unclosed fence", f"Here it is:\n```python\n{DOUBLE}\n", DOUBLE),
    ("closing fence glued to the code", f"```python\n{DOUBLE}```", DOUBLE),
    ("bare code", DOUBLE, DOUBLE),
    ("bare code, stray closing fence", f"{DOUBLE}\n```", DOUBLE),  # issue 11
    ("bare code, stray fence, prose", f"{DOUBLE}\n```\nThis works for all integers.", DOUBLE),
    ("prose line before bare def", f"Here is the function:\n{DOUBLE}", DOUBLE),  # issue 11
    ("prose before and after bare code", f"Sure, here you go.\n\n{DOUBLE}\n\nIt returns twice x.", DOUBLE),
    ("bare code with its imports", f"Using math:\nimport math\n{DOUBLE}\nDone.", f"import math\n{DOUBLE}"),
    ("function then usage block", f"```python\n{DOUBLE}\n```\nUsage:\n```python\nprint(double(3))\n```", DOUBLE),
    ("function then test block", f"```python\n{DOUBLE}\n```\n```python\nassert double(2) == 5\n```", DOUBLE),
    ("helper block then entry point", "```python\nFACTOR = 2\n```\nthen\n```python\ndef double(x):\n"
     "    return FACTOR * x\n```", "FACTOR = 2\n\ndef double(x):\n    return FACTOR * x"),
    ("draft then fix", "```python\ndef double(x):\n    return x\n```\nOops, fixed:\n```python\n"
     f"{DOUBLE}\n```", DOUBLE),
    ("fence indented in a markdown list", "1. Define it:\n   ```python\n   def double(x):\n       return 2 * x\n"
     "   ```\n2. Call it.", DOUBLE),
    ("<code> tags", "<code>def double(x):\n    return 2 * x if x &gt; 0 else x + x</code>",
     "def double(x):\n    return 2 * x if x > 0 else x + x"),
    ("<pre><code> with a language class", f'<pre><code class="language-python">{DOUBLE}\n</code></pre>', DOUBLE),
    ("doctest prompts", ">>> def double(x):\n...     return 2 * x\n...\n>>> double(3)\n6", DOUBLE),
    ("bare code, prose, bare usage", f"{DOUBLE}\n\nFor example:\n\nprint(double(3))", DOUBLE),
]


@pytest.mark.parametrize("shape, reply, want", CODE_SHAPES, ids=[c[0] for c in CODE_SHAPES])
def test_code_shapes(shape, reply, want):
    program = extract_code(reply)
    assert program == want
    namespace: dict = {}
    exec(compile(program, shape, "exec"), namespace)
    assert namespace["double"](3) == 6


def test_code_for_named_entry_point_keeps_only_what_it_reaches():
    """With the task's names the program is the imports plus the definitions they reach (EvalPlus' rule): a
    wrong self-test, printing and a __main__ block in the same block go."""
    reply = ("```python\nimport math\n\nSCALE = 2\nUNUSED = 3\n\ndef helper(x):\n    return SCALE * x\n\n"
             "def double(x):\n    return helper(x)\n\nassert double(2) == 5\nprint(double(3))\n\n"
             "if __name__ == '__main__':\n    double(int(input()))\n```")
    program = extract_code(reply, ["double"])
    assert program == ("import math\n\nSCALE = 2\n\ndef helper(x):\n    return SCALE * x\n\n"
                       "def double(x):\n    return helper(x)")
    assert "assert" in extract_code(reply)  # without names the block is kept whole
    assert extract_code(reply, ["other"]) == extract_code(reply)  # names it does not define: as without names
    decorated = ("```python\nfrom functools import cache\n\n@cache\ndef fib(n):\n"
                 "    return n if n < 2 else fib(n-1) + fib(n-2)\n```")
    assert extract_code(decorated, ["fib"]).splitlines()[2] == "@cache"


def test_code_body_completion_is_not_taken_for_a_program():
    """A HumanEval-style completion is an indented body: no program, so the scorer appends the reply to the prompt."""
    assert extract_code("    return [x + 1 for x in xs]\n") is None
    assert extract_code("```python\n    return x + 1\n```") == "    return x + 1"


@pytest.mark.parametrize("text, want", [
    ("The answer is (C).", "C"),
    ("Answer: d", "D"),
    ("I pick \\boxed{B}", "B"),
    ("Option B looks wrong, so the answer is A", "A"),
    ("Between the choices I choose:\nC", "C"),
    ("none of these", None),
])
def test_choice(text, want):
    assert extract_choice(text) == want


def test_grid():
    text = "Output:\n```\n1 2 3\n4 5 6\n```\ndone"
    assert extract_grid(text) == "1 2 3\n4 5 6"
    assert extract_grid("[[1, 0], [0, 1]] then\n7 7\n8 8") == "7 7\n8 8"
    assert extract_grid("no grid") is None


def test_unknown_extractor_raises():
    with pytest.raises(ValueError, match="unknown extractor"):
        extract("x", "nope")


# LaTeX and separator forms that GSM8K/MATH/AIME solutions and model replies write, with their right values
@pytest.mark.parametrize("text, want", [
    (r"\boxed{$9{,}500}", "9500"),                       # issue 11: gave 500
    (r"so \boxed{1{,}000{,}000}.", "1000000"),
    (r"\boxed{1\,000\,000}", "1000000"),                 # thin-space thousands
    (r"\boxed{12\!345}", "12345"),
    (r"The total is \$1,234.50.", "1234.50"),
    (r"The answer is $\$18.00$.", "18.00"),
    (r"$50\%$ of them", "50"),
    (r"\boxed{\text{12 apples}}", "12"),
    (r"\boxed{18\text{ dollars}}", "18"),
    (r"\boxed{5\ \text{cm}}", "5"),
    (r"\boxed{\frac{1}{2}}", "1/2"),
    (r"\boxed{-\dfrac{3}{4}}", "-3/4"),
    (r"\boxed{\tfrac12}", "1/2"),
    (r"\boxed{2\frac{1}{4}}", "9/4"),                    # mixed number
    (r"x^2\frac{1}{2}", "1/2"),                           # an exponent is not a whole part
    (r"\boxed{\left(\frac{1}{2}\right)}", "1/2"),
    (r"\boxed{90^\circ}", "90"), (r"\boxed{10^{\circ}}", "10"), ("an angle of 45°", "45"),
    (r"\boxed{1.5\times 10^{3}}", "1.5e3"),
    ("#### 9,500", "9500"),
])
def test_number_latex_forms(text, want):
    assert extract(text, "number") == want

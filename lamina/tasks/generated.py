"""Seeded synthetic tasks with exact answers and tunable difficulty: arithmetic, unit conversion, small code functions.

Problems are deduplicated and assigned to train/dev/test by a hash of their text, so splits never overlap. The
hash divides the question space in DEFAULT_SIZES' proportions whatever sizes are asked (for the standard splits), so
asking for more train examples never changes dev or test: they are the same questions in the same order, and a
larger train split starts with the smaller one. A family yields at most its distinct questions (arithmetic
difficulty 1 has 361 in all, about 40% of them train); a split that cannot be filled comes back short.
"""
from __future__ import annotations

import hashlib
import random
from fractions import Fraction
from typing import Any, Callable

from lamina.errors import SpecError

Record = dict[str, Any]
DEFAULT_SIZES = {"train": 200, "dev": 100, "test": 200}
NAMES = ("Sam", "Ana", "Li", "Tom", "Mia", "Raj", "Eva", "Ben")
ITEMS = ("apples", "marbles", "books", "stickers", "coins", "pencils", "cards", "shells")


def _num(value: Fraction | int | float) -> str:
    value = Fraction(value).limit_denominator(1000)
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


# ---- arithmetic ----

def arithmetic(rng: random.Random, difficulty: int) -> Record:
    if difficulty == 1:
        a, b = rng.randint(1, 19), rng.randint(1, 19)
        return {"question": f"What is {a} + {b}?", "reference": str(a + b)}
    if difficulty == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-")
        return {"question": f"What is {a} {op} {b}?", "reference": str(a + b if op == "+" else a - b)}
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(5, 20 * difficulty)
    text = [f"{name} has {total} {item}."]
    for _ in range(difficulty - 2):
        total, step = _word_step(rng, name, item, total, difficulty)
        text.append(step)
    text.append(f"How many {item} does {name} have now?")
    return {"question": " ".join(text), "reference": str(total)}


def _word_step(rng: random.Random, name: str, item: str, total: int, difficulty: int) -> tuple[int, str]:
    kind = rng.choice(["more", "less", "double"] if difficulty >= 5 else ["more", "less"])
    if kind == "double" and total <= 100:
        return total * 2, f"Then {name}'s number of {item} doubles."
    if kind == "less" and total > 2:
        k = rng.randint(1, total - 1)
        return total - k, f"{name} gives away {k} {item}."
    k = rng.randint(1, 10 * difficulty)
    return total + k, f"{name} gets {k} more {item}."


# ---- unit conversion ----

UNITS = [("meters", "centimeters", 100), ("kilograms", "grams", 1000), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("kilometers", "meters", 1000), ("days", "hours", 24),
         ("feet", "inches", 12), ("liters", "milliliters", 1000), ("weeks", "days", 7)]


def units(rng: random.Random, difficulty: int) -> Record:
    big, small, factor = rng.choice(UNITS)
    if difficulty == 1:
        n = rng.randint(1, 20)
        return {"question": f"How many {small} are in {n} {big}?", "reference": str(n * factor)}
    if difficulty == 2:
        n = rng.randint(2, 40) * factor // rng.choice([2, 4, 1])
        return {"question": f"How many {big} are {n} {small}?", "reference": _num(Fraction(n, factor))}
    n, m = rng.randint(1, 9), rng.randint(1, factor - 1)
    return {"question": f"How many {small} are in {n} {big} and {m} {small}?", "reference": str(n * factor + m)}


# ---- small code functions with tests ----

CodeSpec = tuple[str, str, Callable[..., Any], Callable[[random.Random], tuple]]

_EASY: list[CodeSpec] = [
    ("add_{k}", "returns x plus {k}", lambda x, k: x + k, lambda r: (r.randint(-20, 50),)),
    ("times_{k}", "returns x multiplied by {k}", lambda x, k: x * k, lambda r: (r.randint(-20, 50),)),
    ("minus_{k}", "returns x minus {k}", lambda x, k: x - k, lambda r: (r.randint(-20, 50),)),
    ("square_plus_{k}", "returns x squared plus {k}", lambda x, k: x * x + k, lambda r: (r.randint(-9, 9),)),
]
_MEDIUM: list[CodeSpec] = [
    ("reverse_text", "returns the string s reversed", lambda s: s[::-1], lambda r: (_word(r),)),
    ("count_vowels", "returns how many vowels (a, e, i, o, u) the lowercase string s contains",
     lambda s: sum(c in "aeiou" for c in s), lambda r: (_word(r),)),
    ("sum_list", "returns the sum of the list of integers xs", lambda xs: sum(xs), lambda r: (_ints(r),)),
    ("max_list", "returns the largest number in the non-empty list xs", lambda xs: max(xs),
     lambda r: (_ints(r, 1),)),
    ("count_even", "returns how many even numbers the list xs contains",
     lambda xs: sum(x % 2 == 0 for x in xs), lambda r: (_ints(r),)),
    ("is_even", "returns True if the integer x is even, else False", lambda x: x % 2 == 0,
     lambda r: (r.randint(-50, 50),)),
]
_HARD: list[CodeSpec] = [
    ("sum_even_squares", "returns the sum of the squares of the even numbers in the list xs",
     lambda xs: sum(x * x for x in xs if x % 2 == 0), lambda r: (_ints(r),)),
    ("running_total", "returns the list of running totals of the list xs",
     lambda xs: [sum(xs[:i + 1]) for i in range(len(xs))], lambda r: (_ints(r),)),
    ("long_words", "returns the words of the sentence s that have more than 3 letters, in order",
     lambda s: [w for w in s.split() if len(w) > 3], lambda r: (" ".join(_word(r) for _ in range(r.randint(1, 5))),)),
    ("second_largest", "returns the second largest distinct number in the list xs (at least two distinct)",
     lambda xs: sorted(set(xs))[-2], lambda r: (_ints(r, 2) + [101, 102],)),
]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 7)))


def _ints(rng: random.Random, minimum: int = 0) -> list[int]:
    return [rng.randint(-10, 30) for _ in range(rng.randint(minimum, 6))]


def code(rng: random.Random, difficulty: int) -> Record:
    pool = {1: _EASY, 2: _MEDIUM}.get(difficulty, _HARD)
    name, doc, fn, make_args = rng.choice(pool)
    k = rng.randint(2, 9)
    uses_k = "{k}" in name
    name, doc = name.format(k=k), doc.format(k=k)
    call = (lambda *a: fn(*a, k)) if uses_k else fn
    args = _distinct_args(rng, make_args, 7)
    tests = [f"assert {name}({', '.join(map(repr, a))}) == {call(*a)!r}" for a in args]
    shown = "\n".join(f">>> {name}({', '.join(map(repr, a))})\n{call(*a)!r}" for a in args[:2])
    question = (f"Write a Python function `{name}` that {doc}.\nExamples:\n{shown}\n"
                f"Reply with the function in a ```python code block.")
    return {"question": question, "reference": "", "entry_point": name, "tests": tests, "public_tests": tests[:2]}


def _distinct_args(rng: random.Random, make_args: Callable[[random.Random], tuple], n: int) -> list[tuple]:
    seen, out = set(), []
    for _ in range(n * 20):
        args = make_args(rng)
        if repr(args) not in seen:
            seen.add(repr(args))
            out.append(args)
        if len(out) == n:
            break
    return out


GENERATORS: dict[str, tuple[Callable[[random.Random, int], Record], int]] = {
    "arithmetic": (arithmetic, 5), "units": (units, 3), "code": (code, 3)}


def generate(generator: str, difficulty: int = 1, seed: int = 0,
             sizes: dict[str, int] | None = None) -> list[Record]:
    if generator not in GENERATORS:
        raise SpecError(f"unknown generator {generator!r}; known: {', '.join(GENERATORS)}")
    make, levels = GENERATORS[generator]
    if not 1 <= difficulty <= levels:
        raise SpecError(f"generator {generator!r}: difficulty must be 1..{levels}, got {difficulty}")
    sizes = dict(sizes or DEFAULT_SIZES)
    rng = random.Random(f"{generator}-{difficulty}-{seed}")
    buckets: dict[str, list[Record]] = {split: [] for split in sizes}
    seen: set[str] = set()
    for _ in range(50 * sum(sizes.values())):
        record = make(rng, difficulty)
        if record["question"] in seen:
            continue
        seen.add(record["question"])
        split = _split_of(record["question"], sizes)
        if split in buckets and len(buckets[split]) < sizes[split]:
            buckets[split].append(record)
        if all(len(buckets[s]) >= sizes[s] for s in sizes):
            break
    return [{"id": f"{generator}{difficulty}-{split}-{i}", **record, "split": split}
            for split, records in buckets.items() for i, record in enumerate(records)]


def _split_of(question: str, sizes: dict[str, int]) -> str:
    """The split a question belongs to: by its hash, in DEFAULT_SIZES' proportions when every split asked for is a
    standard one (so the sizes asked never move a question between splits), else in the sizes' proportions."""
    shares = DEFAULT_SIZES if set(sizes) <= set(DEFAULT_SIZES) else sizes
    point = int(hashlib.sha1(question.encode()).hexdigest()[:8], 16) / 16 ** 8 * sum(shares.values())
    for split, size in shares.items():
        if point < size:
            return split
        point -= size
    return list(shares)[-1]

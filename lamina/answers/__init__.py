"""Answers for voting: the tasks extractor pulls the answer out, then it is normalised so equal answers compare equal."""
from __future__ import annotations

import re

from lamina.answers.extract import extract as extract_raw

_NUMERIC = re.compile(r"^-?\d+(?:\.\d+)?$")


def normalise(answer: str, kind: str = "auto") -> str:
    if kind == "choice":
        return answer.strip("()[] .").upper()
    if kind == "code":
        return "\n".join(line.rstrip() for line in answer.strip().splitlines() if line.strip())
    text = answer.strip().replace("$", "").replace(",", "").replace("−", "-")
    if _NUMERIC.match(text):
        number = float(text)
        return str(int(number)) if number == int(number) else repr(number)
    return re.sub(r"\s+", " ", answer.strip().lower()).strip(" .!*")


def extract(text: str, kind: str = "auto") -> str | None:
    """The normalised answer in `text` by `kind` (auto, boxed, number, choice, code, text), or None."""
    raw = extract_raw(text, kind)
    if raw is None:
        return None
    return normalise(raw, kind) or None

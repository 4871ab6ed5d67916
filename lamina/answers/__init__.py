"""Answers: pull the final answer out of a reply (`extract.py`) and decide when two answers are the same one
(`equality.py`, the one definition votes, scorers and verifiers share).

`extract(text, method)` below is what a vote groups by: the extracted answer's canonical key under the kind that
fits the extractor (`number` -> number, `choice` -> choice, `code` -> code, `text` -> text, `grid` -> exact,
others -> auto). The raw extractors are in `lamina.answers.extract` (import names from it:
`from lamina.answers.extract import extract_code`; the package attribute `extract` is the function below).
"""
from __future__ import annotations

from lamina.answers.equality import (KINDS, answer_key, contains, equivalent, math_compare, normalize_text,
                                     number_key, parse_number)
from lamina.answers.extract import EXTRACTORS, SELECT, RegexExtract
from lamina.answers.extract import extract as extract_raw

__all__ = ["EXTRACTORS", "KINDS", "SELECT", "RegexExtract", "answer_key", "contains", "equivalent", "extract",
           "extract_raw", "kind_for", "math_compare", "normalize_text", "number_key", "parse_number"]

_KIND_OF_EXTRACTOR = {"number": "number", "choice": "choice", "code": "code", "text": "text", "grid": "exact"}


def kind_for(method: str) -> str:
    """The answer kind (see `lamina.answers.equality`) that compares what extractor `method` returns."""
    return _KIND_OF_EXTRACTOR.get(method, "auto")


def extract(text: str, method: str = "auto", regex: RegexExtract | None = None) -> str | None:
    """The canonical key of the answer in `text` by extractor `method` (auto, boxed, phrase, number, choice, code,
    grid, text, regex with `regex`), or None when there is none: candidates with equal keys are the same answer."""
    return answer_key(extract_raw(text, method, regex=regex), kind_for(method))

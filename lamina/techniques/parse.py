"""Lenient parsers for what small models write back; each returns None when nothing usable is found."""
from __future__ import annotations

import re

_INT = re.compile(r"\d+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_NEGATIVE = re.compile(r"\b(incorrect|wrong|not correct|invalid|false|no)\b", re.I)
_POSITIVE = re.compile(r"\b(correct|right|valid|true|yes)\b", re.I)


def parse_ranking(text: str, n: int) -> list[int] | None:
    """Candidate indices (0-based) best first; missing ones follow in their original order."""
    seen: list[int] = []
    found = re.findall(r"\[(\d+)\]", text) or re.findall(r"(?:response|answer)\s*#?(\d+)", text, re.I)
    if not found and len(text.strip()) <= 40:
        found = _INT.findall(text)
    for match in found:
        index = int(match) - 1
        if 0 <= index < n and index not in seen:
            seen.append(index)
    if not seen:
        return None
    return seen + [i for i in range(n) if i not in seen]


def parse_ab(text: str) -> str | None:
    """"A" or "B": a capital A/B word anywhere, else a lowercase a/b as the first word ("Both ..." is neither)."""
    text = text.strip().replace("*", "")
    match = re.search(r"\b([AB])\b", text) or re.match(r"([ab])\b", text)
    return match.group(1).upper() if match else None


def parse_score(text: str, low: float = 1, high: float = 10) -> float | None:
    for match in _NUMBER.findall(text):
        value = float(match)
        if low <= value <= high:
            return value
    return None


def parse_verdict(text: str) -> bool | None:
    """True for correct/yes, False for incorrect/no; the verdict line wins over the reasoning."""
    verdict = re.search(r"verdict\s*[:\-]?\s*(\w+(?:\s+\w+)?)", text, re.I)
    scope = verdict.group(1) if verdict else text
    negative, positive = _NEGATIVE.search(scope), _POSITIVE.search(scope)
    if negative and (not positive or negative.start() <= positive.start()):
        return False
    if positive:
        return True
    return None


def parse_tests(text: str, limit: int) -> list[str]:
    body = "\n".join(re.findall(r"```(?:python)?\n(.*?)```", text, re.S)) or text
    tests = [line.strip() for line in body.splitlines() if line.strip().startswith("assert ")]
    if not tests:
        tests = [line.strip(" -*0123456789.") for line in body.splitlines() if len(line.strip()) > 8]
    return list(dict.fromkeys(tests))[:limit]

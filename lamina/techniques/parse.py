"""Lenient parsers for what small models write back; each returns None when nothing usable is found."""
from __future__ import annotations

import math
import re

from lamina.backends.base import TokenLP

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


def extract_code(text: str) -> str:
    from lamina.answers.extract import extract_code as extract_fenced

    return extract_fenced(text) or text


def mean_logprob(logprobs: list[TokenLP] | None) -> float | None:
    if not logprobs:
        return None
    return sum(lp.logprob for lp in logprobs) / len(logprobs)


def mean_entropy(logprobs: list[TokenLP] | None) -> float | None:
    """Mean per-token entropy from the top-k alternatives; the leftover mass counts as one more outcome."""
    if not logprobs or not any(lp.top for lp in logprobs):
        return None
    total = 0.0
    for lp in logprobs:
        probs = [math.exp(v) for v in (lp.top or {lp.token: lp.logprob}).values()]
        rest = max(0.0, 1.0 - sum(probs))
        total -= sum(p * math.log(p) for p in probs + [rest] if p > 0)
    return total / len(logprobs)


def verdict_probability(first: TokenLP | None, yes: tuple[str, ...] = ("yes", "correct", "true"),
                        no: tuple[str, ...] = ("no", "incorrect", "false", "wrong")) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the first generated token's top alternatives."""
    if first is None:
        return None
    options = dict(first.top) or {first.token: first.logprob}
    p_yes = sum(math.exp(v) for k, v in options.items() if k.strip().lower() in yes)
    p_no = sum(math.exp(v) for k, v in options.items() if k.strip().lower() in no)
    if p_yes + p_no == 0:
        return None
    return p_yes / (p_yes + p_no)

"""Pull the final answer out of a model's reply: \\boxed{}, "The answer is ...", the last number, a code block, a choice."""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from lamina.answers.code import extract_program
from lamina.answers.latex import plain_number_text

EXTRACTORS = ("auto", "boxed", "phrase", "number", "code", "choice", "grid", "text", "regex")
SELECT = ("first", "last")

_NUMBER = re.compile(
    r"(?<![\w.])[-−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+(?![\w.]))?(?:/\d+)?(?![\d])")
_PHRASE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*[:=]|answer\s*[:=]|####)\s*[:=]?\s*(.+)",
    re.IGNORECASE)
_CHOICE_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*(?:\*\*)?\s*[\(\[]?([A-J])[\)\].:]?(?![a-zA-Z])", re.IGNORECASE)
_BOXED_CMDS = ("\\boxed", "\\fbox")


@dataclass(frozen=True, slots=True)
class RegexExtract:
    """The `regex` extractor's settings (lm-evaluation-harness' regex filter): the answer is `group` (a number or a
    name; 0 is the whole match) of the `select` (`first` or `last`) match of `pattern`."""
    pattern: re.Pattern[str]
    group: int | str = 1
    select: str = "last"

    @classmethod
    def build(cls, pattern: object, group: object = None, select: object = "last") -> "RegexExtract":
        """Checked settings (group None: 1 when the pattern has a group, else 0). Raises ValueError naming the field
        (`pattern`, `group` or `select`) and its value: a missing or invalid pattern, a group the pattern lacks, a
        select not first/last."""
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern is required with `extract: regex` (a regular expression with a group around "
                             f"the answer, e.g. 'answer: (\\d+)'), got {pattern!r}")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        group = (1 if compiled.groups else 0) if group is None else group
        if not (isinstance(group, str) and group in compiled.groupindex
                or isinstance(group, int) and not isinstance(group, bool) and 0 <= group <= compiled.groups):
            raise ValueError(f"group must be a group of pattern {pattern!r} (0..{compiled.groups}"
                             f"{''.join(', ' + name for name in compiled.groupindex)}), got {group!r}")
        if select not in SELECT:
            raise ValueError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
        return cls(compiled, group, str(select))

    def __call__(self, text: str) -> str | None:
        """The selected match's group, stripped; None when nothing matches (or the group took no part)."""
        found = [m for m in self.pattern.finditer(text) if m.group(self.group) is not None]
        if not found:
            return None
        return found[0 if self.select == "first" else -1].group(self.group).strip() or None


def extract(text: str, method: str = "auto", choices: str = "ABCD", regex: RegexExtract | None = None) -> str | None:
    """The answer in `text` by extractor `method` (one of EXTRACTORS), or None; `regex` is required by `regex`."""
    if method == "auto":
        return extract_boxed(text) or extract_phrase(text) or extract_number(text) or (text.strip() or None)
    if method == "boxed":
        return extract_boxed(text)
    if method == "phrase":
        return extract_phrase(text)
    if method == "number":
        return extract_number(extract_boxed(text) or extract_phrase(text) or text)
    if method == "code":
        return extract_code(text)
    if method == "choice":
        return extract_choice(text, choices)
    if method == "grid":
        return extract_grid(text)
    if method == "text":
        return text.strip() or None
    if method == "regex":
        if regex is None:
            raise ValueError("the regex extractor needs a pattern (RegexExtract)")
        return regex(text)
    raise ValueError(f"unknown extractor {method!r}; known: {', '.join(EXTRACTORS)}")


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (balanced braces), or None."""
    start = max(text.rfind(cmd) for cmd in _BOXED_CMDS)
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1:i].strip() or None
    return None


def extract_phrase(text: str) -> str | None:
    """What follows the last "The answer is" / "Answer:" / "####", up to the end of the line."""
    matches = list(_PHRASE.finditer(text))
    if not matches:
        return None
    answer = matches[-1].group(1).replace("**", "").strip()
    answer = re.split(r"\.\s|\.$|\n", answer)[0].strip()
    answer = answer.strip("*$ ").rstrip(".").strip()
    boxed = extract_boxed(answer)
    return boxed or answer or None


def extract_number(text: str) -> str | None:
    """The last number in the text, normalised: LaTeX forms read (`9{,}500`, `\\frac{1}{2}`, `\\$5`, `50\\%`:
    `lamina.answers.latex`), thousands separators and '$' dropped, trailing '.0' kept as written."""
    matches = _NUMBER.findall(plain_number_text(text))
    if not matches:
        return None
    raw = matches[-1].replace("−", "-").replace("$", "").replace(",", "").replace(" ", "")
    return raw


def extract_code(text: str, names: Collection[str] = ()) -> str | None:
    """The program in the reply, and only it (`lamina.answers.code`: fences, `<code>`, bare code amid prose,
    `>>>` sessions; blocks merged by the names they define); `names` are those the program must define (a task's
    entry point, the names its tests call). None when there is no code."""
    return extract_program(text, names)


def extract_choice(text: str, choices: str = "ABCD") -> str | None:
    """A multiple-choice letter: "the answer is (B)", \\boxed{B}, else a lone letter; None when nothing fits."""
    boxed = extract_boxed(text)
    if boxed and boxed.strip("() ").upper() in choices:
        return boxed.strip("() ").upper()
    for match in reversed(list(_CHOICE_PHRASE.finditer(text))):
        letter = match.group(1).upper()
        if letter in choices:
            return letter
    lone = re.findall(r"(?<![A-Za-z])[\(\[]?([" + choices + r"])[\)\].:]?(?![A-Za-z'])", text)
    return lone[-1] if lone else None


def extract_grid(text: str) -> str | None:
    """The last block of consecutive lines made only of digits, one space between cells."""
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if re.fullmatch(r"[\d\s,\[\]]+", line) and re.search(r"\d", line):
            current.append(" ".join(re.findall(r"\d", line)))
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks[-1] if blocks else None

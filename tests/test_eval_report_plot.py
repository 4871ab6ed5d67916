"""The accuracy-vs-compute plot of eval runs (lamina report --plot, search report --test)."""
from __future__ import annotations

from lamina.eval.report import plot
from lamina.eval.stats import RunSummary, wilson_interval


def test_plot_draws_a_perfect_run_whose_interval_rounds_above_it(tmp_path):
    low, high = wilson_interval(80, 80)
    perfect = RunSummary("all right", 80, 1.0, low, min(high, 1.0) - 1e-12, 0, 1.0, 40.0, 20.0, 0.5)
    half = RunSummary("half", 80, 0.5, *wilson_interval(40, 80), 0, 1.0, 40.0, 20.0, 0.5)
    path = plot([perfect, half], tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

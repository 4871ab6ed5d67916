"""Per linear shape, the faster exact kind on this CPU: the native block-quantized kernel or oneDNN's packed fp32.

Both multiply exactly the file's dequantized weights and give a row the same result whatever its batch, but their
sums round differently: a linear that switched kind with the batch size would make a seeded sample depend on its
batch mates. So each (formats, shape) gets one kind for every batch size: native unless oneDNN is clearly faster
overall (geometric mean of times over batches of 1, 8, 32 and 64 rows, each the fastest of a few runs, lower by
ONEDNN_MARGIN) without being clearly slower on a single row (decode of one stream reads every weight per token, which
the native kernel does from the 4-bit blocks: giving that up halved single-stream speed on an AVX2 CPU, while oneDNN's
gains at 32-64 rows were a few tens of percent). Timed once per machine (CPU model,
kernel build, torch version, threads) and kept in a JSON table (`LAMINA_LINEAR_CHOICES`, default ~/.cache/lamina/linear_choices.json).
`LAMINA_LINEAR_CHOICE=native` or `onednn` decides without timing.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from lamina.engine.kernels import cpu_model
from lamina.engine.loader.types import QuantizedWeight

BATCHES = (1, 8, 32, 64)
ROUNDS = 5
ONEDNN_MARGIN = 1.1  # oneDNN is chosen when native takes over 1.1x its time (geometric mean over BATCHES) ...
SINGLE_ROW_SLACK = 0.9  # ... and native is not under 0.9x oneDNN's time on one row
POLICIES = ("measure", "native", "onednn")


def policy() -> str:
    value = os.environ.get("LAMINA_LINEAR_CHOICE", "measure").strip().lower()
    if value not in POLICIES:
        raise ValueError(f"LAMINA_LINEAR_CHOICE={value!r}: expected one of {', '.join(POLICIES)}")
    return value


def table_path() -> Path:
    return Path(os.environ.get("LAMINA_LINEAR_CHOICES", "~/.cache/lamina/linear_choices.json")).expanduser()


def machine_key(kernel: ModuleType) -> str:
    return f"{cpu_model()} | {kernel.__name__} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def shape_key(parts: list[QuantizedWeight]) -> str:
    return f"{'+'.join(p.qtype.name for p in parts)} {sum(p.shape[0] for p in parts)}x{parts[0].shape[1]}"


def time_ratio(native: Callable[[Tensor], Tensor], onednn: Callable[[Tensor], Tensor],
               in_features: int) -> tuple[float, float]:
    """(geometric mean over BATCHES, the one-row value) of native time / oneDNN time, each the fastest of ROUNDS
    interleaved runs (the least disturbed by other processes)."""
    logs = []
    with torch.inference_mode():
        for rows in BATCHES:
            x = torch.randn(rows, in_features)
            times: dict[int, list[float]] = {0: [], 1: []}
            for run in range(ROUNDS + 1):  # the first round warms up
                for which, fn in enumerate((native, onednn)):
                    start = time.perf_counter()
                    fn(x)
                    if run:
                        times[which].append(time.perf_counter() - start)
            logs.append(math.log(min(times[0]) / min(times[1])))
    return math.exp(sum(logs) / len(logs)), math.exp(logs[0])


class ChoiceTable:
    """The kinds chosen on this machine, read from and written back to `table_path()`."""

    def __init__(self, kernel: ModuleType) -> None:
        self.path, self.machine = table_path(), machine_key(kernel)
        try:
            self.all = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.all = {}
        self.choices: dict[str, str] = self.all.setdefault(self.machine, {})
        self.changed = False

    def native_is_faster(self, parts: list[QuantizedWeight], native: nn.Module,
                         make_onednn: Callable[[], nn.Module]) -> bool:
        """The kind kept for these parts' shape; timed (against `make_onednn()`, built only then) if not yet known."""
        key = shape_key(parts)
        if key not in self.choices:
            mean, single_row = time_ratio(native, make_onednn(), parts[0].shape[1])
            onednn = mean > ONEDNN_MARGIN and single_row > SINGLE_ROW_SLACK
            self.choices[key] = "onednn" if onednn else "native"
            self.changed = True
        return self.choices[key] == "native"

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.all, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only home: measure again next time

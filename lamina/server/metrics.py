"""Prometheus text exposition (format 0.0.4), written by hand: counters, gauges and histograms with labels."""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped)) + "}"


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass(slots=True)
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        return lines + [f"{self.name}{_labels(k)} {_num(v)}" for k, v in sorted(self.values.items())]


@dataclass(slots=True)
class Gauge:
    """Read at scrape time from `collect`, which returns (labels, value) pairs."""

    name: str
    help: str
    collect: Callable[[], Iterable[tuple[dict[str, str], float]]]

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        samples = sorted((tuple(sorted(labels.items())), value) for labels, value in self.collect())
        return lines + [f"{self.name}{_labels(k)} {_num(v)}" for k, v in samples]


@dataclass(slots=True)
class _Series:
    counts: list[int]
    sum: float = 0.0
    count: int = 0


@dataclass(slots=True)
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    series: dict[Labels, _Series] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series([0] * len(self.buckets))
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.buckets):
            series.counts[index] += 1
        series.sum += value
        series.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, series in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip(self.buckets, series.counts):
                cumulative += count
                lines.append(f"{self.name}_bucket{_labels(key, [('le', _num(bound))])} {cumulative}")
            lines.append(f"{self.name}_bucket{_labels(key, [('le', '+Inf')])} {series.count}")
            lines.append(f"{self.name}_sum{_labels(key)} {_num(series.sum)}")
            lines.append(f"{self.name}_count{_labels(key)} {series.count}")
        return lines


class Metrics:
    """Every series the server exports; gauges read engine and queue state when scraped."""

    def __init__(self, engine_stats: Callable[[], dict[str, dict[str, int]]], queue_depth: Callable[[], int],
                 queue_capacity: int) -> None:
        self.requests = Counter("lamina_requests_total", "Generation requests by model, endpoint and outcome (ok, error, aborted).")
        self.prompt_tokens = Counter("lamina_prompt_tokens_total", "Prompt tokens processed, inner calls included.")
        self.completion_tokens = Counter("lamina_completion_tokens_total", "Completion tokens generated, inner calls included.")
        self.aborted = Counter("lamina_aborted_requests_total", "Requests aborted because the client went away.")
        self.latency = Histogram("lamina_request_latency_seconds", "Time from request arrival to its last byte.")
        self.ttft = Histogram("lamina_time_to_first_token_seconds", "Time from request arrival to its first generated text.")
        # vLLM's vllm:spec_decode_num_draft_tokens_total and ..._num_accepted_tokens_total, named as this server's
        self.draft_tokens = Counter("lamina_spec_decode_num_draft_tokens_total",
                                    "Draft tokens proposed by speculative decoding (prompt lookup), counted when a request ends.")
        self.accepted_tokens = Counter("lamina_spec_decode_num_accepted_tokens_total",
                                       "Draft tokens accepted (each a token gained without a forward of its own).")

        def per_model(key: str) -> Callable[[], list[tuple[dict[str, str], float]]]:
            return lambda: [({"model": m}, float(s[key])) for m, s in engine_stats().items()]

        def blocks_in_use() -> list[tuple[dict[str, str], float]]:
            return [({"model": m}, float(s["num_total_blocks"] - s["num_free_blocks"])) for m, s in engine_stats().items()]

        self.extra: list[Counter] = []
        self.gauges = [
            Gauge("lamina_queue_depth", "Generation requests admitted and not yet finished.", lambda: [({}, queue_depth())]),
            Gauge("lamina_queue_capacity", "Most generation requests admitted at once (--max-queue).",
                  lambda: [({}, queue_capacity)]),
            Gauge("lamina_kv_blocks_in_use", "KV cache blocks held by live sequences (total minus free).", blocks_in_use),
            Gauge("lamina_kv_blocks_total", "KV cache blocks in the pool.", per_model("num_total_blocks")),
            Gauge("lamina_engine_running_sequences", "Sequences the engine is decoding.", per_model("num_running")),
            Gauge("lamina_engine_waiting_sequences", "Sequences waiting for KV blocks or a batch slot.", per_model("num_waiting")),
        ]

    def render(self) -> str:
        families = [self.requests, self.prompt_tokens, self.completion_tokens, self.aborted, self.latency, self.ttft,
                    self.draft_tokens, self.accepted_tokens, *self.extra, *self.gauges]
        return "\n".join(line for family in families for line in family.render()) + "\n"

"""Check workers' metrics, summed into the agent's /metrics.

Each worker sends `snapshot()` of its registry every second; the main process's
`WorkerMetrics` collector serves the sum over the workers (the highest value for the few
gauges where a sum means nothing). When a worker ends, its counters and histograms are kept,
so the agent's totals never go backwards across a worker's restart.
"""

from __future__ import annotations

import json
import logging
import operator
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

HIGHEST_OF = frozenset({"picket_agent_memory_per_check_bytes"})
CUMULATIVE = frozenset({"counter", "histogram"})

# [family name, help, type, [[sample name, labels, value], ...]]
Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


def snapshot(registry: CollectorRegistry, rss: int) -> bytes:
    families = [
        (
            family.name,
            family.documentation,
            family.type,
            [
                (s.name, s.labels, s.value)
                for s in family.samples
                if not s.name.endswith("_created")  # a sum of creation times means nothing
            ],
        )
        for family in registry.collect()
    ]
    return json.dumps({"rss": rss, "families": families}).encode()


@dataclass
class _Merged:
    documentation: str
    type: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def _merge(into: dict[str, _Merged], families: Iterable[Family], types: frozenset[str]) -> None:
    for name, documentation, kind, samples in families:
        if kind not in types:
            continue
        merged = into.get(name)
        if merged is None:
            merged = into[name] = _Merged(documentation, kind)
        combine: Callable[[float, float], float] = max if name in HIGHEST_OF else operator.add
        for sample, labels, value in samples:
            key = (sample, tuple(sorted(labels.items())))
            old = merged.samples.get(key)
            merged.samples[key] = value if old is None else combine(old, value)


class WorkerMetrics(Collector):
    ALL = frozenset({"counter", "histogram", "gauge"})

    def __init__(self) -> None:
        self._lock = threading.Lock()  # collect() runs in the metrics server's thread
        self._live: dict[int, tuple[int, list[Family]]] = {}
        self._retired: dict[str, _Merged] = {}

    def update(self, worker: int, payload: bytes) -> None:
        try:
            data: dict[str, Any] = json.loads(payload)
            rss, families = int(data["rss"]), [tuple(f) for f in data["families"]]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("worker %d sent unreadable metrics: %s", worker, exc)
            return
        with self._lock:
            self._live[worker] = (rss, families)

    def retire(self, worker: int) -> None:
        """The worker ended: keep its counters and histograms, forget its gauges."""
        with self._lock:
            last = self._live.pop(worker, None)
            if last is not None:
                _merge(self._retired, last[1], CUMULATIVE)

    @property
    def reporting(self) -> int:
        return len(self._live)

    def rss(self) -> int:
        with self._lock:
            return sum(rss for rss, _ in self._live.values())

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, _Merged] = {}
        with self._lock:
            for name, old in self._retired.items():
                merged[name] = _Merged(old.documentation, old.type, dict(old.samples))
            for _, families in self._live.values():
                _merge(merged, families, self.ALL)
        for name, family in merged.items():
            metric = Metric(name, family.documentation, family.type)
            for (sample, labels), value in family.samples.items():
                metric.add_sample(sample, dict(labels), value)
            yield metric

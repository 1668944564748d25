"""The agent's Prometheus metrics, served on PICKET_METRICS_LISTEN."""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class CheckMetrics:
    """What a check worker counts: its checks, their lateness and its load. The agent's main
    process serves the sum over its workers (`agent.snapshot.WorkerMetrics`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.checks = Counter(
            "picket_agent_checks_total", "Checks run", ["type", "outcome"], registry=r
        )
        self._by_type: dict[str, tuple[Counter, Counter, Histogram]] = {}
        self.check_duration = Histogram(
            "picket_agent_check_duration_seconds",
            "Wall time of a check",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lateness = Histogram(
            "picket_agent_schedule_lateness_seconds",
            "How late a scheduled check started after its slot time",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.slots_skipped = Counter(
            "picket_agent_slots_skipped_total",
            "Slots not run: the agent was more than one interval late (behind), the "
            "monitor's previous check was still running (overlap), or a DisableMonitoring "
            "maintenance period covered the slot (maintenance)",
            ["reason"],
            registry=r,
        )
        self.checks_shed = Counter(
            "picket_agent_checks_shed_total",
            "Scheduled checks not started because too many were already waiting (overload)",
            registry=r,
        )
        self.in_flight = Gauge("picket_agent_checks_in_flight", "Checks running", registry=r)
        self.memory_per_check = Gauge(
            "picket_agent_memory_per_check_bytes",
            "Resident memory of a check worker above its own at start, per check in flight "
            "(the highest over the workers; 0 when idle)",
            registry=r,
        )

    def watch_checks(self, in_flight: Callable[[], int]) -> None:
        """Gauges read when collected, not updated on every check."""
        self.in_flight.set_function(lambda: float(in_flight()))
        baseline = rss_bytes()

        def per_check() -> float:
            running = in_flight()
            return max(0.0, rss_bytes() - baseline) / running if running else 0.0

        self.memory_per_check.set_function(per_check)

    def check_done(self, monitor_type: str, ok: bool, seconds: float) -> None:
        """One check's counters; the labelled children are looked up once per type."""
        children = self._by_type.get(monitor_type)
        if children is None:
            children = self._by_type[monitor_type] = (
                self.checks.labels(monitor_type, "ok"),
                self.checks.labels(monitor_type, "error"),
                self.check_duration.labels(monitor_type),
            )
        (children[0] if ok else children[1]).inc()
        children[2].observe(seconds)


class AgentMetrics:
    """The main process's own metrics: link, outbox, assignments and workers."""

    def __init__(self, memory: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.assignments = Gauge("picket_agent_assignments", "Monitors assigned", registry=r)
        self.outbox_results = Gauge(
            "picket_agent_outbox_results", "Results waiting for the controller's ack", registry=r
        )
        self.outbox_batches = Gauge(
            "picket_agent_outbox_batches", "Batches waiting for the controller's ack", registry=r
        )
        self.outbox_errors = Counter(
            "picket_agent_outbox_write_errors_total",
            "Failed writes of a result batch to disk (retried)",
            registry=r,
        )
        self.outbox_bytes = Gauge(
            "picket_agent_outbox_bytes",
            "Disk space of the batches waiting for the controller's ack (PICKET_OUTBOX_MAX_BYTES)",
            registry=r,
        )
        self.outbox_unwritten_bytes = Gauge(
            "picket_agent_outbox_unwritten_bytes",
            "Results in memory not yet written to the outbox (PICKET_OUTBOX_MEMORY_MAX_BYTES)",
            registry=r,
        )
        self.outbox_dropped = Counter(
            "picket_agent_outbox_dropped_results_total",
            "Results dropped, oldest first: the outbox on disk was full (outbox_full) or the "
            "disk refused writes and memory was full (disk_refused); or a batch file whose "
            "content was bad, set aside as .bad (unreadable)",
            ["reason"],
            registry=r,
        )
        self.assignments_save_errors = Counter(
            "picket_agent_assignments_save_errors_total",
            "Failed writes of the agent's assignments to its data directory (retried)",
            registry=r,
        )
        self.reconnects = Counter(
            "picket_agent_mqtt_reconnects_total", "MQTT connection losses", registry=r
        )
        self.dropped = Counter(
            "picket_agent_mqtt_messages_dropped_total",
            "MQTT messages dropped",
            ["reason"],
            registry=r,
        )
        self.connected = Gauge(
            "picket_agent_mqtt_connected", "1 while connected to the broker", registry=r
        )
        Gauge(
            "picket_agent_memory_rss_bytes",
            "Resident memory of the agent: its main process and its check workers",
            registry=r,
        ).set_function(memory)
        self.workers = Gauge("picket_agent_workers", "Check workers running", registry=r)
        self.worker_restarts = Counter(
            "picket_agent_worker_restarts_total",
            "Check workers that ended unasked and were started again",
            registry=r,
        )

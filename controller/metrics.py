"""The controller's Prometheus metrics, served on its API port at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.api_requests = Counter(
            "picket_api_requests_total",
            "API requests answered",
            ["method", "route", "status"],
            registry=r,
        )
        self.api_duration = Histogram(
            "picket_api_request_duration_seconds",
            "API request handling time",
            ["route"],
            registry=r,
        )
        self.results = Counter(
            "picket_results_ingested_total", "Check results stored", ["error_level"], registry=r
        )
        self.duplicates = Counter(
            "picket_results_duplicate_total",
            "Results received again and not stored twice",
            registry=r,
        )
        self.batches = Counter(
            "picket_result_batches_total", "Result batches committed and acknowledged", registry=r
        )
        self.ingest_errors = Counter(
            "picket_ingest_errors_total", "Failed ingest transactions (agents resend)", registry=r
        )
        self.ingest_lag = Histogram(
            "picket_ingest_lag_seconds",
            "From the start of a check to its result being committed",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.agents_online = Gauge("picket_agents_online", "Agents connected", registry=r)
        self.dropped = Counter(
            "picket_mqtt_messages_dropped_total", "MQTT messages dropped", ["reason"], registry=r
        )
        self.confirmations = Counter(
            "picket_confirmation_requests_total",
            "Re-checks requested to confirm an error",
            registry=r,
        )
        self.ingest_queue_bytes = Gauge(
            "picket_ingest_queue_bytes",
            "Result batches waiting to be stored (or being stored), in bytes as received",
            registry=r,
        )
        self.ingest_queue_batches = Gauge(
            "picket_ingest_queue_batches",
            "Result batches waiting to be stored (or being stored)",
            registry=r,
        )
        self.batches_refused = Counter(
            "picket_result_batches_refused_total",
            "Result batches not queued and not acknowledged (the agent resends them): "
            "queue_full, or already_queued (a resend of a batch still waiting)",
            ["reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "picket_results_dead_lettered_total",
            "Results the database refused, kept in the dead-letter table (and acknowledged)",
            registry=r,
        )
        self.database_up = Gauge(
            "picket_database_up", "1 while the database answers, 0 during an outage", registry=r
        )
        self.control_pending = Gauge(
            "picket_control_messages_pending",
            "Hellos and presence messages waiting to be handled (the newest per agent)",
            registry=r,
        )

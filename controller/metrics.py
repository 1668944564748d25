"""The controller's Prometheus metrics, served on its API port at /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# servers by (checkpoint name, state), assignments by agent id
FleetFigures = Callable[[], tuple[dict[tuple[str, str], int], dict[str, int]]]


class _FleetCollector(Collector):
    """Read at each scrape from the assigner's own view, so never out of step with it."""

    def __init__(self) -> None:
        self.source: FleetFigures | None = None

    def collect(self) -> Iterator[Metric]:
        servers = GaugeMetricFamily(
            "picket_servers",
            "Checkpoint servers by checkpoint and state",
            labels=["checkpoint", "state"],
        )
        assigned = GaugeMetricFamily(
            "picket_assignments", "Monitors assigned to each agent", labels=["agent"]
        )
        if self.source is not None:
            by_state, per_agent = self.source()
            for (checkpoint_name, state), count in sorted(by_state.items()):
                servers.add_metric([checkpoint_name, state], count)
            for agent, count in sorted(per_agent.items()):
                assigned.add_metric([agent], count)
        yield servers
        yield assigned


LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._fleet = _FleetCollector()
        r.register(self._fleet)
        self.notifications = Counter(
            "picket_notifications_total",
            "Notification deliveries by integration kind and outcome (sent, temporary: may "
            "go through later, permanent: refused)",
            ["kind", "outcome"],
            registry=r,
        )
        self.notification_seconds = Histogram(
            "picket_notification_send_seconds",
            "Time to deliver one notification, by integration kind",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
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
        self.confirmation_outcomes = Counter(
            "picket_confirmations_total",
            "Confirmation re-checks answered, by outcome (confirmed: it failed too; cleared: it "
            "passed) and by where they ran (other_checkpoint, same_checkpoint)",
            ["outcome", "where"],
            registry=r,
        )
        self.concurrent_checks = Counter(
            "picket_concurrent_checks_total",
            "Concurrent checks decided from their partial checks, by error level",
            ["error_level"],
            registry=r,
        )
        self.partials_missing = Counter(
            "picket_partial_checks_missing_total",
            "Partial checks of concurrent slots that had not come when their slot was decided",
            registry=r,
        )
        self.concurrent_slots_waiting = Gauge(
            "picket_concurrent_slots_waiting",
            "Concurrent slots waiting for their partial checks",
            registry=r,
        )
        self.results_refused = Counter(
            "picket_results_refused_total",
            "Results dropped: for a monitor that does not exist, or not assigned to the sender",
            ["reason"],
            registry=r,
        )
        self.enrolments = Counter(
            "picket_enrolments_total",
            "Enrolment attempts by outcome: ok, unknown, used, expired, broker_failed",
            ["outcome"],
            registry=r,
        )
        self.login_deletions = Counter(
            "picket_broker_login_deletions_total",
            "Retired agents' broker logins: deleted, failed (retried), by_hand (not enrolled: "
            "no login Picket made), no_admin (enrolled, but no PICKET_BROKER_ADMIN_URL)",
            ["outcome"],
            registry=r,
        )
        self.logins_to_delete = Gauge(
            "picket_broker_logins_to_delete",
            "Retired agents' broker logins still to delete (retried until the broker does)",
            registry=r,
        )
        self.hellos_refused = Counter(
            "picket_hellos_refused_total",
            "Agent hellos refused as invalid, by the field at fault",
            ["field"],
            registry=r,
        )
        self.retention_deleted = Counter(
            "picket_retention_deleted_rows_total",
            "Rows deleted: checks older than the retention (expired) or of a deleted monitor "
            "(monitor_deleted), dead letters older than the retention or of a deleted monitor "
            "(dead_letter)",
            ["reason"],
            registry=r,
        )
        self.retention_batches = Counter(
            "picket_retention_batches_total",
            "Delete transactions run by the retention task",
            registry=r,
        )
        self.retention_failures = Counter(
            "picket_retention_failures_total",
            "Retention passes that failed (the database away); retried a minute later",
            registry=r,
        )
        # logins (controller/auth.py)
        self.password_checks = Counter(
            "picket_password_checks_total",
            "Password checks by outcome (busy: refused with 429, nothing hashed)",
            ["outcome"],
            registry=r,
        )
        self.password_checks_running = Gauge(
            "picket_password_checks_running", "Password checks hashing now", registry=r
        )
        self.password_check_duration = Histogram(
            "picket_password_check_duration_seconds",
            "Time of one password check (scrypt), in its thread",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.login_failures = Counter(
            "picket_login_failures_total", "Logins refused with 401", registry=r
        )
        self.login_throttled = Counter(
            "picket_login_throttled_total",
            "Logins refused with 429 after too many failures from the client",
            registry=r,
        )
        self.login_throttle_entries = Gauge(
            "picket_login_throttle_entries",
            "Keys with failed logins remembered",
            ["table"],
            registry=r,
        )
        self.login_throttle_evictions = Counter(
            "picket_login_throttle_evictions_total",
            "Keys forgotten because their table was full",
            ["table"],
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
        self.inconclusive_slots = Counter(
            "picket_inconclusive_slots_total",
            "Checks stored as inconclusive (the agent's connectivity canary failed too): "
            "NoError, never alerting",
            registry=r,
        )
        self.duplicate_slots = Counter(
            "picket_duplicate_slots_total",
            "Second results for a slot a server of the same checkpoint already reported "
            "(a failover overlap): stored, flagged IsDuplicateSlot, not counted for alerting",
            registry=r,
        )
        self.failovers = Counter(
            "picket_failovers_total",
            "Servers lost (offline) whose monitors moved to peers of their checkpoint",
            registry=r,
        )
        self.monitors_moved = Counter(
            "picket_monitors_moved_total",
            "Monitor placements moved between servers: failover (a server went offline) or "
            "return (a server came back)",
            ["reason"],
            registry=r,
        )
        self.clock_offset = Gauge(
            "picket_agent_clock_offset_seconds",
            "Each agent's clock minus the controller's (best of recent round trips over MQTT)",
            ["agent"],
            registry=r,
        )
        self.clock_rtt = Gauge(
            "picket_agent_clock_round_trip_seconds",
            "Round trip of the clock sample the offset comes from",
            ["agent"],
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

    def watch_fleet(self, source: FleetFigures) -> None:
        self._fleet.source = source

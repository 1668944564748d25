"""Summing the check workers' metrics into the agent's /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import CheckMetrics
from agent.snapshot import WorkerMetrics, snapshot


def _served(collector: WorkerMetrics) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_and_histograms_add_up_and_survive_a_worker() -> None:
    first, second = CheckMetrics(), CheckMetrics()
    first.check_done("Http", True, 0.02)
    first.check_done("Http", False, 0.2)
    second.check_done("Http", True, 0.02)
    second.check_done("DNS", True, 0.001)
    first.lateness.observe(0.0001)
    first.in_flight.set(3)
    second.in_flight.set(4)
    first.memory_per_check.set(1000)
    second.memory_per_check.set(5000)
    merged = WorkerMetrics()
    merged.update(0, snapshot(first.registry, 10))
    merged.update(1, snapshot(second.registry, 20))
    served = _served(merged)
    ok = "picket_agent_checks_total[('outcome', 'ok'), ('type', 'Http')]"
    assert served[ok] == 2
    assert served["picket_agent_checks_total[('outcome', 'error'), ('type', 'Http')]"] == 1
    assert served["picket_agent_checks_total[('outcome', 'ok'), ('type', 'DNS')]"] == 1
    assert served["picket_agent_check_duration_seconds_count[('type', 'Http')]"] == 3
    assert (
        served["picket_agent_check_duration_seconds_bucket[('le', '0.025'), ('type', 'Http')]"] == 2
    )
    assert served["picket_agent_schedule_lateness_seconds_count[]"] == 1
    assert served["picket_agent_checks_in_flight[]"] == 7  # gauges add up ...
    assert served["picket_agent_memory_per_check_bytes[]"] == 5000  # ... but this one: the most
    assert not any("_created" in name for name in served)
    assert merged.rss() == 30

    merged.retire(1)  # worker 1 died: its counts stay, its gauges go
    served = _served(merged)
    assert served[ok] == 2
    assert served["picket_agent_checks_in_flight[]"] == 3
    second_again = CheckMetrics()  # ... and its successor starts from zero
    second_again.check_done("Http", True, 0.02)
    merged.update(1, snapshot(second_again.registry, 20))
    assert _served(merged)[ok] == 3


def test_an_unreadable_snapshot_is_ignored() -> None:
    merged = WorkerMetrics()
    merged.update(0, b"{not json")
    merged.update(0, b'{"rss": 1}')
    assert merged.reporting == 0
    assert _served(merged) == {}

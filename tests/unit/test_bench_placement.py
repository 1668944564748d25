"""The placement benchmark's arithmetic (bench/placement.py): which slot a result is, how many
slots a failover missed, and an event's CPU beyond the steady rate."""

from __future__ import annotations

import pytest

from bench.placement import missed_slots, net_cpu, slot_index


def test_slot_index_is_the_schedulers_slot_number() -> None:
    # agent/scheduler.py: slot k runs at epoch + k * interval + offset
    assert slot_index(7 * 60 + 12.34, 60, 12.34) == 7
    # stored in whole microseconds: a slot a hair early or late is the same slot
    assert slot_index(7 * 60 + 12.34 - 1e-6, 60, 12.34) == 7
    assert slot_index(7 * 60 + 1e-6, 60, 0.0) == 7
    assert slot_index(7 * 60 - 1e-6, 60, 0.0) == 7


def test_no_slot_missed_when_the_peer_runs_the_next_one() -> None:
    # stored slots 10, 11 by the lost agent; killed during slot 11; the peer runs 12
    assert missed_slots([10, 11, 12, 13], kill_slot=11, takeover_slot=12, now_slot=13) == 0


def test_slots_between_the_last_stored_and_the_takeover_are_missed() -> None:
    # the kill came after slot 11 was due, its result died with the agent; 12 passed before
    # the peer had the monitor; the peer ran 13
    assert missed_slots([9, 10, 13, 14], kill_slot=11, takeover_slot=13, now_slot=14) == 2


def test_a_gap_before_the_last_stored_slot_is_not_the_failovers() -> None:
    assert missed_slots([5, 8, 9, 11], kill_slot=9, takeover_slot=11, now_slot=11) == 1


def test_without_a_takeover_every_slot_up_to_now_is_missed() -> None:
    assert missed_slots([10], kill_slot=10, takeover_slot=None, now_slot=14) == 4


def test_with_nothing_stored_the_slots_count_from_the_kill() -> None:
    assert missed_slots([], kill_slot=10, takeover_slot=12, now_slot=12) == 2


def test_a_late_result_of_the_lost_agent_fills_its_slot() -> None:
    # its outbox, resent when it returned, held slot 11: only 12 is missed
    assert missed_slots([10, 11, 13], kill_slot=12, takeover_slot=13, now_slot=13) == 1


def test_net_cpu_subtracts_the_steady_rate_and_never_goes_negative() -> None:
    assert net_cpu(3.0, 0.5, 4.0) == pytest.approx(1.0)
    assert net_cpu(1.0, 0.5, 4.0) == 0.0

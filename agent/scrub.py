"""A check's outcome with its monitor's secret values replaced by `******` (shared.secrets):
every string the agent stores, sends or logs about the check passes through here first."""

from __future__ import annotations

from agent.probes.base import Outcome
from shared.secrets import Scrubber


def scrub_outcome(outcome: Outcome, scrubber: Scrubber) -> None:
    """Scrub the outcome's strings in place: messages, warnings, details (the waterfall, step
    results), attributes, and the body a failed check keeps. Only call it with a scrubber that
    has values (`if scrubber:`): most monitors have no secrets and skip this entirely."""
    outcome.error_message = scrubber.text(outcome.error_message)
    outcome.description_override = scrubber.text(outcome.description_override)
    if outcome.warnings:
        outcome.warnings = [scrubber.text(w) for w in outcome.warnings]
    if outcome.details:
        outcome.details = scrubber.deep(outcome.details)
    if outcome.attributes:
        outcome.attributes = scrubber.deep(outcome.attributes)
    if outcome.body and not outcome.ok:  # only a failed check's body is kept
        outcome.body = scrubber.data(outcome.body)

"""A check result's own cost, in one process: the agent's `make_result` (a plain dict, its
fields derived from shared/results.py) against building the same message as a pydantic model,
and the controller's row for it (`Ingest._row`, derived from the same declarations) against
parsing the message, the work ingest does anyway. CPU µs per result, best of several rounds."""

from __future__ import annotations

import argparse
import time
import timeit
import types
from collections.abc import Callable
from typing import Any

from agent.probes.base import Outcome
from agent.runner import make_result
from bench.agentpath import FAILED_BODY_BYTES
from bench.infra import Summary, table
from controller.ingest import Ingest
from shared.errors import ErrorCode
from shared.messages import CheckResult

ROUNDS = 7
PER_ROUND = 20_000


def _outcomes() -> dict[str, Outcome]:
    """An HTTP check's outcome as the probe leaves it, passing and failing."""
    ok = Outcome(http_status_code=200, total_bytes=612, resolved_ip="127.0.0.1")
    ok.timings_ms = {
        "ResolveTime": 0.012,
        "ConnectionTime": 0.081,
        "HttpsHandshakeTime": 0.0,
        "SendTime": 0.004,
        "WaitTime": 0.35,
        "DownloadTime": 0.02,
        "TotalTime": 0.467,
    }
    ok.details = {
        "Waterfall": [{"Url": "http://127.0.0.1/", "StatusCode": 200, "TotalTime": 0.467}],
        "ResponseHeaders": "HTTP/1.1 200 OK\r\nContent-Length: 612\r\n",
    }
    failed = Outcome(ErrorCode.HTTP_STATUS_MISMATCH, "HTTP status 503")
    failed.http_status_code = 503
    failed.timings_ms = dict(ok.timings_ms)
    failed.details = ok.details
    failed.body = b"<html>down for maintenance</html>" * 20
    return {"passing": ok, "failing": failed}


def _best_us(fn: Callable[[], object]) -> float:
    """CPU µs of this thread per call: what other load on the machine does is not counted."""
    rounds = timeit.repeat(fn, number=PER_ROUND, repeat=ROUNDS, timer=time.thread_time)
    return min(rounds) / PER_ROUND * 1e6


def main(args: argparse.Namespace) -> list[Summary]:
    server = types.SimpleNamespace(id=1)
    ingest: Any = types.SimpleNamespace(
        assigner=types.SimpleNamespace(server=lambda agent: server, monitors={}),
        failed_body_bytes=FAILED_BODY_BYTES,
        _details=Ingest._details,
    )
    rows: list[list[str]] = []
    summaries: list[Summary] = []
    for name, outcome in _outcomes().items():

        def made(outcome: Outcome = outcome) -> dict[str, Any]:
            return make_result("g", "r", "Http", outcome, 1.0, 1.001, None, FAILED_BODY_BYTES)

        message = made()
        parsed = CheckResult.model_validate(message)
        maker = _best_us(made)
        model = _best_us(lambda message=message: CheckResult.model_construct(**message))
        row = _best_us(lambda parsed=parsed: Ingest._row(ingest, "a1", parsed, 0))
        parse = _best_us(lambda message=message: CheckResult.model_validate(message))
        rows.append([name, f"{maker:.2f}", f"{model:.2f}", f"{row:.2f}", f"{parse:.2f}"])
        summaries.append(
            Summary(
                "results",
                f"make_result, {name} (µs)",
                f"{maker:.2f} ({maker / model:.2f}x the model)",
            )
        )
        summaries.append(
            Summary(
                "results",
                f"controller row, {name} (µs)",
                f"{row:.2f} ({row / parse:.2f}x the parse)",
            )
        )
    table(
        "results: CPU µs per result (best of 7 rounds); peers: the message as a pydantic model "
        "and parsing it",
        ["check", "make_result", "model_construct", "Ingest._row", "model_validate"],
        rows,
    )
    return summaries

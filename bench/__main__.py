"""`python -m bench [NAME ...]`: run the benchmarks (all by default; see docs/performance.md)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
from collections.abc import Callable
from types import FrameType

import pycurl
import uvloop

from bench import auth, e2e, engine, infra, lateness, placement, probes, stall, timing
from bench import results as results_bench
from bench.infra import Summary

BENCHMARKS: dict[str, Callable[[argparse.Namespace], list[Summary]]] = {
    "engine": engine.main,
    "probes": probes.main,
    "lateness": lateness.main,
    "timing": timing.main,
    "stall": stall.main,
    "e2e": e2e.main,
    "results": results_bench.main,
    "auth": auth.main,
    "placement": placement.main,
}


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM does what Ctrl-C does: asyncio's runner cancels the running benchmark (its
    `finally` blocks close the engine), outside it KeyboardInterrupt unwinds the ExitStacks
    that stop the child processes and remove the temporary directories."""
    on_sigint = signal.getsignal(signal.SIGINT)
    if callable(on_sigint):
        on_sigint(signum, frame)
    else:
        raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Picket benchmarks on loopback (see docs/performance.md).",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help="seconds of load per engine run, per lateness rate and of e2e's peer (default 6)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=200,
        help="timing: transfers per tool, engine and curl alternating (default 200)",
    )
    parser.add_argument(
        "--e2e-max",
        type=int,
        default=e2e.MAX_MONITORS,
        help=f"e2e: the last step of the ramp, in 1-second monitors (default {e2e.MAX_MONITORS})",
    )
    parser.add_argument(
        "--monitors",
        type=int,
        default=placement.DEFAULT_MONITORS,
        help=f"placement: monitors on the three agents (default {placement.DEFAULT_MONITORS:,})",
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=placement.DEFAULT_INTERVAL,
        help=f"placement: their check interval in seconds (default {placement.DEFAULT_INTERVAL})",
    )
    parser.add_argument(
        "--keepalive",
        type=int,
        default=placement.DEFAULT_KEEPALIVE,
        help="placement: the agents' PICKET_PRESENCE_KEEPALIVE_SECONDS "
        f"(default {placement.DEFAULT_KEEPALIVE})",
    )
    parser.add_argument(
        "--silent-loss",
        action="store_true",
        help="placement: freeze the agent (SIGSTOP) until the controller notices, then kill -9 "
        "it: a host cut off, found by the keepalive; without it kill -9 closes its connection "
        "and the broker notices at once",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.duration = min(max(args.duration, 1.0), 60.0)
    args.runs = min(max(args.runs, 20), 2000)
    args.e2e_max = min(max(args.e2e_max, 10), 20000)
    names = args.names or list(BENCHMARKS)
    infra.keep_traffic_on_loopback()
    # a shell starts background jobs with SIGINT ignored; we want it to stop us cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)

    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(
        f"Picket benchmarks, {now}, {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}, uvloop {uvloop.__version__}"
    )
    print(f"{pycurl.version}")
    summaries: list[Summary] = []
    skipped: list[str] = []
    try:
        for name in names:
            try:
                summaries += BENCHMARKS[name](args)
            except infra.Missing as exc:
                print(f"\n{name}: not run: {exc}")
                skipped.append(name)
    except KeyboardInterrupt:
        print("\ninterrupted: child processes stopped, temporary directories removed")
        return 130

    if summaries:
        infra.table(
            "SUMMARY (measured in this run; goals are printed, not enforced)",
            ["benchmark", "figure", "value", "goal", "goal met?"],
            [[s.benchmark, s.figure, s.value, s.goal or "-", s.verdict] for s in summaries],
            left=2,
        )
    if skipped:
        print(f"\nnot run (missing tools, see above): {', '.join(skipped)}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

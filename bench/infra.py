"""Loopback servers and load tools for the benchmarks, and the small helpers they share.

Every child process runs in its own session (a terminal's Ctrl-C reaches only us; we stop the
children in `finally`) and gets SIGKILL if this process dies (PR_SET_PDEATHSIG). Every
temporary file lives in a TemporaryDirectory owned by the caller's ExitStack.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# binary -> the Debian package that provides it
PACKAGES = {
    "nginx": "nginx-light",
    "wrk": "wrk",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
    "curl": "curl",
    "dnsmasq": "dnsmasq-base",
    "mosquitto_sub": "mosquitto-clients",
    "mosquitto_pub": "mosquitto-clients",
}


class Missing(Exception):
    """A tool a benchmark needs is not installed."""


def require(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        package = PACKAGES.get(binary, binary)
        raise Missing(
            f"`{binary}` is not installed: install the Debian package {package} "
            f"(apt-get install -y {package})"
        )
    return path


def keep_traffic_on_loopback() -> None:
    """Drop proxy settings: libcurl, curl and urllib would otherwise send loopback URLs to a
    proxy. Every URL the benchmarks use is a loopback IP literal."""
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)
        os.environ.pop(name.upper(), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, child: Child, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}: {child.tail()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not listen on {LOOPBACK}:{port} within {within}s")


def http_get(url: str, timeout: float = 5.0) -> str:
    """A GET through urllib with proxies disabled (loopback URLs only)."""
    assert url.startswith(f"http://{LOOPBACK}:"), url
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8", "replace"))


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """A child process in its own session, stopped (SIGTERM, then SIGKILL) by `stop`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=None if env is None else dict(env),
            cwd=cwd,
        )

    def tail(self, lines: int = 5) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        # anything the child left in its own session (its process group id is its pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if not isinstance(self._out, int):
            self._out.close()


def start_child(
    stack: ExitStack,
    name: str,
    argv: Sequence[str],
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    child = Child(name, argv, log, env, cwd)
    stack.callback(child.stop)
    return child


def tempdir(stack: ExitStack, prefix: str) -> Path:
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"picket-bench-{prefix}-")))


# --- CPU accounting ----------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; it is enclosed in parentheses
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, parents before children."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    pids = [pid]
    for parent in pids:  # grows as it goes: breadth first
        pids.extend(parents.get(parent, []))
    return pids


def cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, from /proc."""
    user = system = 0
    for pid in pids:
        fields = _proc_stat(pid)
        if fields is not None:
            user += int(fields[11])  # utime: field 14 of /proc/PID/stat
            system += int(fields[12])  # stime: field 15
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def own_cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def children_cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


# --- nginx ------------------------------------------------------------------------------------

NGINX_BODY = "ok\n"


class Nginx:
    """nginx in the foreground on a free loopback port: one worker, a small static 200 body at
    every path, and stub_status at /nginx_status to count requests."""

    def __init__(self, stack: ExitStack) -> None:
        binary = require("nginx")
        self.dir = tempdir(stack, "nginx")
        self.port = free_port()
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / sub).mkdir()
        user = "user root;" if os.geteuid() == 0 else ""
        d = self.dir
        config = f"""
{user}
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    server {{
        listen {LOOPBACK}:{self.port} backlog=4096;
        location = /nginx_status {{ stub_status; }}
        location / {{ default_type text/plain; return 200 "{NGINX_BODY.strip()}\\n"; }}
    }}
}}
"""
        conf = d / "nginx.conf"
        conf.write_text(config)
        argv = [binary, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
        self.child = start_child(stack, "nginx", argv, d / "stdout.log")
        wait_port(self.port, self.child)
        self.url = f"http://{LOOPBACK}:{self.port}/"

    def requests(self) -> int:
        """Requests nginx has handled so far (stub_status; includes this one)."""
        text = http_get(f"http://{LOOPBACK}:{self.port}/nginx_status")
        match = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"unexpected stub_status output: {text!r}")
        return int(match.group(3))

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(process_tree(self.child.proc.pid)))


# --- blackbox_exporter ------------------------------------------------------------------------

BLACKBOX_CONFIG = """modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      method: GET
      valid_status_codes: [200]
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      follow_redirects: false
  dns_a:
    prober: dns
    timeout: 5s
    dns:
      query_name: bench.test
      query_type: A
      transport_protocol: udp
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      validate_answer_rrs:
        fail_if_none_matches_regexp: [".*127[.]0[.]0[.]1"]
  tcp_connect:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
"""


class Dnsmasq:
    """Debian's dnsmasq (package dnsmasq-base) in the foreground on a free loopback port,
    answering `name` A 127.0.0.1 from its own configuration (no upstream, no hosts file)."""

    def __init__(self, stack: ExitStack, name: str) -> None:
        binary = require("dnsmasq")
        self.dir = tempdir(stack, "dnsmasq")
        self.port = free_port()
        argv = [
            binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            f"--listen-address={LOOPBACK}",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            f"--address=/{name}/{LOOPBACK}",
        ]
        self.child = start_child(stack, "dnsmasq", argv, self.dir / "dnsmasq.log")
        wait_port(self.port, self.child)  # it serves DNS over TCP on the same port


class Blackbox:
    """Debian's prometheus-blackbox-exporter on a free loopback port with an http_2xx, a dns_a
    and a tcp_connect module. Its HTTP prober builds a new client (so a new connection) for
    every probe."""

    def __init__(self, stack: ExitStack) -> None:
        binary = require("prometheus-blackbox-exporter")
        self.dir = tempdir(stack, "blackbox")
        self.port = free_port()
        conf = self.dir / "blackbox.yml"
        conf.write_text(BLACKBOX_CONFIG)
        argv = [
            binary,
            f"--config.file={conf}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--log.level=warn",
        ]
        self.child = start_child(stack, "blackbox_exporter", argv, self.dir / "blackbox.log")
        wait_port(self.port, self.child)

    def probe_url(self, target: str, module: str = "http_2xx") -> str:
        return f"http://{LOOPBACK}:{self.port}/probe?module={module}&target={target}"

    def cpu_seconds(self) -> tuple[float, float]:
        return cpu_seconds([self.child.proc.pid])


# --- wrk --------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rate: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_user: float = 0.0  # wrk's own CPU time
    cpu_system: float = 0.0
    output: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def run_wrk(
    url: str,
    duration: float,
    connections: int = 64,
    threads: int = 2,
    headers: Sequence[str] = (),
) -> WrkResult:
    assert url.startswith(f"http://{LOOPBACK}:"), url
    binary = require("wrk")
    seconds = max(1, round(duration))
    argv = [binary, f"-c{connections}", f"-t{threads}", f"-d{seconds}s", "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    before = children_cpu_seconds()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = children_cpu_seconds()
    text = out.decode("utf-8", "replace")
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    if proc.returncode != 0 or done is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {text.strip()}")
    elapsed = float(done.group(2)) / (1000.0 if done.group(3) == "ms" else 1.0)
    requests = int(done.group(1))
    result = WrkResult(
        requests=requests,
        seconds=elapsed,
        rate=requests / elapsed,
        cpu_user=after[0] - before[0],
        cpu_system=after[1] - before[1],
        output=text,
    )
    non = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if non:
        result.non_2xx = int(non.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        names = ("connect", "read", "write", "timeout")
        result.socket_errors = {n: int(v) for n, v in zip(names, sock.groups(), strict=True)}
    return result


# --- statistics and output --------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1
) -> None:
    """A plain-text table; the first `left` columns are left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def note(text: str) -> None:
    for paragraph in text.strip().split("\n"):
        print(f"  {paragraph}")
    sys.stdout.flush()


@dataclass
class Summary:
    """One line of the final summary: a measured figure beside its goal."""

    benchmark: str
    figure: str
    value: str
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measurable in this run

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "-" if not self.goal else "not measured"
        return "met" if self.met else "NOT met"


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    return f"{value:.3f}"

"""No test or benchmark asks the system resolver for a name: every target is an IP literal on
loopback, or a name the test's own DNS server on loopback answers (tests/servers/dns.py, a DNS
monitor's `DnsServer`), so no query leaves the machine. `*.invalid` or `localhost` (forced to
IPv6, glibc asks the network's DNS for it) would."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from tests.helpers import REPO

# hosts of URLs that are parsed, masked or validated, never requested
NEVER_REQUESTED = frozenset({"h", "x", "host", "broker.example"})
URL_HOST = re.compile(
    r"\b(?:https?|mqtts?|wss?)://(?:[^/@\s]*@)?(\[[^\]]*\]|\{[^}]*\}|[^/:?#\s\"'{}]+)"
)
ADDRESS = re.compile(r"[\"'](?:NetworkAddress|DnsServer)[\"']\s*:\s*[\"']([^\"']+)[\"']")
HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.%a-z]+\]")
FORBIDDEN = re.compile(r"\blocalhost\b|\.invalid\b", re.IGNORECASE)


def _host(value: str) -> str:
    """The host of `host`, `host:port`, `[v6]:port` or `v6`."""
    if value.startswith("[") and "]" in value:
        return value[1 : value.index("]")]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return False
    return True


def _private_resolver(text: str) -> bool:
    """A test that runs its probes in a namespace of its own, with its own resolv.conf and
    hosts bound over the system's: its names are answered there."""
    return "unshare" in text and "/etc/resolv.conf" in text


def _sources() -> list[Path]:
    files = [*REPO.joinpath("tests").rglob("*.py"), *REPO.joinpath("bench").rglob("*.py")]
    return sorted(
        p for p in files if p.name != Path(__file__).name and not _private_resolver(p.read_text())
    )


def test_tests_and_benchmarks_look_up_no_names() -> None:
    found = []
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{number}"
            code = line.split("#", 1)[0] if not line.lstrip().startswith(('"', "'")) else line
            if FORBIDDEN.search(code) and '"""' not in line:
                found.append(f"{where}: {line.strip()}")
            for host in URL_HOST.findall(code) + ADDRESS.findall(code):
                host = _host(host)
                if host.startswith("{"):  # formatted in: the value is checked where it is made
                    continue
                if not HOST_NAME.fullmatch(host):  # not a name (a fuzz test's junk): no lookup
                    continue
                if not _is_literal(host) and host.lower() not in NEVER_REQUESTED:
                    found.append(f"{where}: {host}")
    assert not found, "names the system resolver would look up:\n" + "\n".join(found)


def test_examples_look_up_no_names() -> None:
    """The README's and docs' examples: no `localhost` or `*.invalid`, and the addresses a
    monitor example checks are IP literals (a production broker's name is the reader's own)."""
    found = []
    for path in [REPO / "README.md", *sorted(REPO.joinpath("docs").glob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            hosts = [_host(h) for h in ADDRESS.findall(line)]
            if FORBIDDEN.search(line) or not all(_is_literal(h) for h in hosts):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "names the system resolver would look up:\n" + "\n".join(found)

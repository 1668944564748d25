"""Hosts in network namespaces the test creates: a Linux bridge in the root namespace with
198.51.100.1/24 and 2001:db8::1/64, and per host a namespace with its own address from each
(RFC 5737 / RFC 3849 documentation ranges, never routed anywhere), reached over a veth pair
or, for a host behind a delaying hop, over a TUN device pair whose packets a user-space
forwarder (`python -m tests.netns forward`, below) holds back in one direction.

Everything is named `pkt<pid>...`, so a run's leftovers (a run killed before its teardown)
are known by name. Runs take a lock while they hold the fabric, and delete any other run's
leftovers under it: one holding the lock is the only live one (the lock goes with its
process), and the bridge addresses are the same for every run."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import heapq
import os
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE_V4 = "198.51.100.1"
BRIDGE_V6 = "2001:db8::1"
PREFIX = "pkt"
LEFTOVER = re.compile(rf"^{PREFIX}(\d+)")
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if sys.platform != "linux":
        return f"network namespaces are Linux's ({sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the delaying hop needs TUN devices)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def remove_leftovers(keep_pid: int) -> list[str]:
    """Namespaces and links of runs other than `keep_pid`'s; what was removed. Called under
    `fabric_lock`, so their runs are dead (a live one would hold the lock)."""
    removed = []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in names.splitlines():
        name = line.split()[0] if line.split() else ""
        found = LEFTOVER.match(name)
        if found and int(found.group(1)) != keep_pid:
            _delete_namespace(name)
            removed.append(name)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        parts = line.split(": ")
        if len(parts) < 2:
            continue
        name = parts[1].split("@")[0]
        found = LEFTOVER.match(name)
        if found and int(found.group(1)) != keep_pid:
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
            removed.append(name)
    return removed


def _delete_namespace(name: str) -> None:
    """The namespace, and what the test started in it and left there (a dead run's agents,
    its forwarder): killed by pid, as `ip netns pids` lists them."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@contextlib.contextmanager
def fabric_lock() -> Iterator[None]:
    path = Path(tempfile.gettempdir()) / "picket-netns.lock"
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a run holding it ends within its own timeout
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class NetHost:
    """One host: its namespace, addresses, and how to run a command in it."""

    name: str
    netns: str
    ipv4: str
    ipv6: str
    link: str  # its link's end in the root namespace
    delayed_ms: int = 0

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        """Its link goes down: from now on not a packet in or out, not even a goodbye."""
        ip("link", "set", self.link, "down")


@dataclass
class Fabric:
    """The bridge and the hosts of one run; `close` removes all of it, whatever was made."""

    pid: int = field(default_factory=os.getpid)
    hosts: list[NetHost] = field(default_factory=list)
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.pid}"

    def open(self) -> None:
        bridge = f"{self.prefix}b"
        self.links.append(bridge)
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{BRIDGE_V4}/24", "dev", bridge)
        ip("-6", "addr", "add", f"{BRIDGE_V6}/64", "dev", bridge, "nodad")
        ip("link", "set", bridge, "up")

    def _namespace(self, index: int) -> str:
        netns = f"{self.prefix}-h{index}"
        ip("netns", "add", netns)
        ip("link", "set", "lo", "up", netns=netns)
        return netns

    def add_host(self, name: str, index: int) -> NetHost:
        """A host on the bridge over a veth pair: 198.51.100.<index>, 2001:db8::<index>."""
        netns = self._namespace(index)
        outside, inside = f"{self.prefix}r{index}", f"{self.prefix}n{index}"
        host = NetHost(name, netns, f"198.51.100.{index}", f"2001:db8::{index:x}", outside)
        self.hosts.append(host)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self.links.append(outside)
        ip("link", "set", inside, "netns", netns)
        ip("link", "set", outside, "master", f"{self.prefix}b", "up")
        ip("link", "set", inside, "name", "eth0", netns=netns)
        ip("addr", "add", f"{host.ipv4}/24", "dev", "eth0", netns=netns)
        ip("-6", "addr", "add", f"{host.ipv6}/64", "dev", "eth0", "nodad", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)
        return host

    def add_delayed_host(self, name: str, index: int, delay_ms: int) -> NetHost:
        """A host whose only link is a TUN device; a forwarder moves its packets to a TUN
        device in the root namespace and back, holding each one to the host `delay_ms`."""
        netns = self._namespace(index)
        outside = f"{self.prefix}t{index}"
        v4, v6 = f"198.51.100.{index}", f"2001:db8::{index:x}"
        host = NetHost(name, netns, v4, v6, outside, delay_ms)
        self.hosts.append(host)
        forwarder = subprocess.Popen(
            [sys.executable, "-m", "tests.netns", "forward", netns, outside, str(delay_ms)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
        )
        self.forwarders.append(forwarder)
        assert forwarder.stdout is not None
        ready = forwarder.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"the TUN forwarder did not start (exit {forwarder.poll()})")
        ip("link", "set", outside, "up")
        ip("route", "add", f"{host.ipv4}/32", "dev", outside)
        ip("-6", "route", "add", f"{host.ipv6}/128", "dev", outside)
        ip("link", "set", "tun0", "up", netns=netns)
        ip("addr", "add", f"{host.ipv4}/32", "dev", "tun0", netns=netns)
        ip("-6", "addr", "add", f"{host.ipv6}/128", "dev", "tun0", "nodad", netns=netns)
        ip("route", "add", "default", "dev", "tun0", netns=netns)
        ip("-6", "route", "add", "default", "dev", "tun0", netns=netns)
        return host

    def close(self) -> None:
        for forwarder in self.forwarders:  # its TUN devices and their routes go with it
            forwarder.terminate()
            try:
                forwarder.wait(10)
            except subprocess.TimeoutExpired:
                forwarder.kill()
                forwarder.wait()
            if forwarder.stdout is not None:
                forwarder.stdout.close()
        for host in self.hosts:
            _delete_namespace(host.netns)
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "delete", link], capture_output=True)


def _tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def forward(netns: str, outside: str, delay_ms: int) -> None:
    """Make TUN `outside` here and `tun0` in `netns`, then move packets between them, those
    towards the host `delay_ms` late; until terminated (the devices go with the process)."""
    root_fd = _tun(outside)
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}", "rb") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    host_fd = _tun("tun0")
    print("ready", flush=True)
    delay = delay_ms / 1000
    held: list[tuple[float, int, bytes]] = []  # (when due, order, packet) towards the host
    order = 0
    selector = selectors.DefaultSelector()
    selector.register(root_fd, selectors.EVENT_READ)
    selector.register(host_fd, selectors.EVENT_READ)
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        for key, _ in selector.select(timeout):
            while True:
                try:
                    packet = os.read(key.fd, 65_536)
                except BlockingIOError:
                    break
                if key.fd == host_fd:
                    _write(root_fd, packet)
                else:
                    order += 1
                    heapq.heappush(held, (time.monotonic() + delay, order, packet))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _write(host_fd, heapq.heappop(held)[2])


def _write(fd: int, packet: bytes) -> None:
    with contextlib.suppress(BlockingIOError, OSError):  # a full queue drops, as a link does
        os.write(fd, packet)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "forward":
        forward(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: python -m tests.netns forward NETNS OUTSIDE_TUN DELAY_MS")

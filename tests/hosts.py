"""Other machines on this one: Linux namespaces that stand in for hosts in tests.

A Host runs commands under its own hostname (a UTS namespace), optionally in its own pid
namespace (pids there start at 1, and /proc shows only its own processes), and, inside a
Network, in its own network namespace joined by a veth pair to a bridge on this machine. The
bridge holds 10.231.N.1/24 and each host 10.231.N.2, .3, ...; servers that hosts must reach
listen on `network.address` (see servers.py). Nothing here routes beyond the bridge.

    reason = unavailable(network=True, pid=True)      # None, or why not (for pytest.skip)
    with start_network() as net:
        with start_postgres(listen=("127.0.0.1", net.address), clients=("127.0.0.1/32", net.cidr)) as pg:
            worker = net.host("worker-1", pid=True).popen(["zipnet-train", ...], env=env)
            os.kill(worker.pid, signal.SIGTERM)         # the command itself, not a wrapper
            worker.wait(timeout=60)
            net.cut(net.hosts[0])                       # its link down: a partition (net.heal: up again)

    host("box-2").run(["hostname"])                     # a hostname alone: no network namespace
    with host(socket.gethostname(), pid=True) as twin:  # this hostname, another pid namespace
        twin.popen([...])                               # ended (SIGKILL) when the block ends

Creating namespaces needs root. Everything a Network made (processes in its namespaces, the
namespaces, veths, the bridge) is removed when its context ends, also after a failure.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

SUBNETS = ipaddress.ip_network("10.231.0.0/16")  # one /24 per Network: 10.231.N.0/24
# the command runs as the last step of `sh -c`: with its own pid namespace sh stays as pid 1 (an init
# that forwards nothing), so the command gets signals as on any machine; without one, sh execs it
_EXEC = 'hostname "$1" || exit 125; shift; exec "$@"'
_INIT = 'hostname "$1" || exit 125; shift; "$@"; exit $?'


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def command_line(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


class HostProcess:
    """A command running on a Host. `pid` is the command's own pid on this machine (not a wrapper's)."""

    def __init__(self, popen: subprocess.Popen, argv: list[str], pid_namespace: bool, timeout: float = 30):
        self.popen = popen
        self.argv = argv
        self.pid = self._find(pid_namespace, timeout)

    def _find(self, pid_namespace: bool, timeout: float) -> int:
        """Wait until the wrappers have exec'd the command; its pid (in a pid namespace: sh's child)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid_namespace:
                candidates = [c for init in _children(self.popen.pid) for c in _children(init)]
            else:
                candidates = [self.popen.pid]
            for pid in candidates:
                if command_line(pid) == self.argv:
                    return pid
            if self.popen.poll() is not None:
                if self.popen.returncode == 0:  # done already: the wrapper's pid is all there is
                    return self.popen.pid
                raise RuntimeError(f"{self.argv[0]} did not start on its host (exit {self.popen.returncode})")
            time.sleep(0.01)
        raise RuntimeError(f"{self.argv[0]} did not start on its host within {timeout:.0f} s")

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status. In a pid namespace a command killed by signal N reads 128+N (as its shell saw it)."""
        return self.popen.wait(timeout)

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def stdout(self):
        return self.popen.stdout

    @property
    def stderr(self):
        return self.popen.stderr


@dataclass
class Host:
    """Another machine: its hostname, its network namespace and address (None: this machine's network)."""

    hostname: str
    netns: str | None = None
    address: str | None = None
    pid: bool = False  # its own pid namespace
    _started: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` wrapped to run on this host."""
        wrap = ["ip", "netns", "exec", self.netns] if self.netns else []
        wrap += ["unshare", "--uts"]
        if self.pid:
            wrap += ["--pid", "--fork", "--kill-child", "--mount-proc"]
        return [*wrap, "sh", "-c", _INIT if self.pid else _EXEC, "sh", self.hostname, *argv]

    def popen(self, argv: list[str], **kwargs) -> HostProcess:
        """Start `argv` here (Popen's keyword arguments); returns once the command itself runs."""
        argv = [str(a) for a in argv]
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self._started.append(proc)
        try:
            return HostProcess(proc, argv, self.pid)
        except BaseException:
            _end(proc)
            raise

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` here to completion (subprocess.run's keyword arguments)."""
        return subprocess.run(self.command([str(a) for a in argv]), **kwargs)

    def stop(self) -> None:
        """End what was started here and is still running: SIGKILL the wrappers (in a pid namespace that ends all)."""
        for proc in self._started:
            _end(proc)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def host(hostname: str, pid: bool = False) -> Host:
    """A host on this machine's network: its own hostname (and pid namespace)."""
    return Host(hostname, pid=pid)


@dataclass
class Network:
    """A bridge on this machine (`address` in `cidr`) with hosts in their own network namespaces."""

    bridge: str
    address: str
    cidr: str
    hosts: list[Host] = field(default_factory=list)
    _veths: list[str] = field(default_factory=list, repr=False)

    def host(self, hostname: str, pid: bool = False) -> Host:
        """A new host on this network: its own network namespace, veth to the bridge, the next address."""
        i = len(self.hosts)
        net = ipaddress.ip_network(self.cidr)
        address, ns, veth = str(net[i + 2]), f"{self.bridge}h{i}", f"{self.bridge}v{i}"
        _ip("netns", "add", ns)
        made = Host(hostname, netns=ns, address=address, pid=pid)
        self.hosts.append(made)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._veths.append(veth)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return made

    def _veth(self, host: Host) -> str:
        return self._veths[self.hosts.index(host)]

    def cut(self, host: Host) -> None:
        """A partition: the host's link to the bridge goes down (its veth on this side). Nothing is
        refused or reset: packets either way are dropped, as when a switch port or a cable fails."""
        _ip("link", "set", self._veth(host), "down")

    def heal(self, host: Host) -> None:
        """The host's link is up again: what it sends reaches the bridge, and the servers, once more."""
        _ip("link", "set", self._veth(host), "up")

    def close(self) -> None:
        for h in self.hosts:
            h.stop()
            pids = _ip("netns", "pids", h.netns, check=False).stdout.split()  # anything else started in it
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", h.netns, check=False)
        for veth in self._veths:  # a namespace's veth goes with it, but later: delete it now
            _ip("link", "del", veth, check=False)
        _ip("link", "del", self.bridge, check=False)


def _taken_subnets() -> set[ipaddress.IPv4Network]:
    out = _ip("-4", "-o", "addr", "show").stdout
    taken = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            taken.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return taken


@contextlib.contextmanager
def start_network() -> Iterator[Network]:
    """A new bridge 10.231.N.1/24 (the first N free here); removed with all its hosts when the context ends."""
    taken = _taken_subnets()
    network = None
    try:
        for subnet in SUBNETS.subnets(new_prefix=24):
            if any(subnet.overlaps(t) for t in taken):
                continue
            bridge = f"znb{subnet.network_address.packed[2]}"
            if _ip("link", "add", bridge, "type", "bridge", check=False).returncode != 0:
                continue  # another test run holds this one: try the next
            network = Network(bridge=bridge, address=str(subnet[1]), cidr=str(subnet))
            _ip("addr", "add", f"{network.address}/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
            break
        else:
            raise RuntimeError(f"no free /24 left in {SUBNETS} for a test network")
        yield network
    finally:
        if network is not None:
            network.close()


def _probe(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@functools.cache
def unavailable(network: bool = False, pid: bool = False) -> str | None:
    """Why hosts (with their own pid namespaces, with their own networks) cannot be made here; None if they can."""
    if os.geteuid() != 0:
        return "namespaces for other hosts need root (unshare --uts, ip netns)"
    for tool in ["unshare", "sh", "hostname"] + (["ip"] if network else []):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if (err := _probe(host("zipnet-probe", pid=pid).command(["true"]))) is not None:
        return f"unshare --uts{' --pid' if pid else ''} failed: {err}"
    if not network:
        return None
    try:
        with start_network() as net, socket.create_server((net.address, 0)) as server:
            port = server.getsockname()[1]
            reach = f"import socket; socket.create_connection(({net.address!r}, {port}), timeout=5).close()"
            python = shutil.which("python3") or "python3"
            if (err := _probe(net.host("zipnet-probe", pid=pid).command([python, "-c", reach]))) is not None:
                return f"a network namespace cannot reach the bridge {net.address}: {err}"
    except RuntimeError as err:
        return f"network namespaces with a veth bridge failed: {err}"
    return None

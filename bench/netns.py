"""A network namespace behind a veth pair: the benchmark's "remote" destination site.

The root end of the pair gets the first address of a /30 (the worker side), the namespace end
the second; both are created here and removed with the pair. Everything the
destination runs (its sshd, its Glance) is started inside the namespace, so every byte
between the worker and the destination crosses the veth, where the kernel counts it.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.lab.glance_venv import file_lock
from support.lab.services import GLANCE_API_CONF, GUNICORN_CONF, GlanceSite, Sshd, ssh_banner

NETNS_PREFIX = "migratio-bench-"  # + the pid of the benchmark that made it
POOL = "10.231.0.0/16"            # /30s for the veth pairs are taken from here
IP_TIMEOUT = 15                   # seconds for any one `ip` command
LOCK = Path("/run/lock/migratio-bench-netns.lock")


class NetnsError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def veth_names(owner: int) -> tuple[str, str]:
    return f"mb{owner:x}r", f"mb{owner:x}n"  # root end, namespace end (at most 15 characters)


@dataclass
class Link:
    """A veth pair with one end in a namespace of its own, both named after the benchmark's pid.

    `up()` takes a free /30 from POOL (several benchmarks may run at once: each gets its own
    namespace, pair and subnet) and removes what benchmarks that died left behind;
    `down()` removes the pair and the namespace.
    """

    owner: int = field(default_factory=os.getpid)
    subnet: str | None = None

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.owner}"

    @property
    def root_if(self) -> str:
        return veth_names(self.owner)[0]

    @property
    def ns_if(self) -> str:
        return veth_names(self.owner)[1]

    @property
    def root_addr(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    @property
    def ns_addr(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[2])

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.netns]

    def up(self) -> "Link":
        remove_stale()
        self.down()
        with file_lock(LOCK):  # serialises subnet choice between benchmarks started together
            self.subnet = self.subnet or free_subnet(self.owner)
            _check_free(self.subnet)
            ip("netns", "add", self.netns)
            try:
                ip("link", "add", self.root_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.netns)
                ip("addr", "add", f"{self.root_addr}/{self.prefix}", "dev", self.root_if)
                ip("link", "set", self.root_if, "up")
                ip("-n", self.netns, "addr", "add", f"{self.ns_addr}/{self.prefix}", "dev", self.ns_if)
                ip("-n", self.netns, "link", "set", self.ns_if, "up")
                ip("-n", self.netns, "link", "set", "lo", "up")
            except BaseException:
                self.down()
                raise
        return self

    def down(self, timeout: float = 20.0) -> None:
        """Stop what still runs in the namespace (only the benchmark puts processes there),
        delete it and wait (bounded) until the veth pair is gone."""
        if self.netns in namespaces():
            for pid in self.pids():
                _kill(pid)
            ip("netns", "del", self.netns, check=False)
        root_if = Path(f"/sys/class/net/{self.root_if}")
        deadline = time.monotonic() + timeout
        while root_if.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if root_if.exists():
            ip("link", "del", self.root_if, check=False)

    def pids(self) -> list[int]:
        out = ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def counters(self) -> dict[str, int]:
        """Bytes and packets the root end sent (towards the destination) and received."""
        stats = Path(f"/sys/class/net/{self.root_if}/statistics")
        return {name: int((stats / name).read_text()) for name in
                ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")}

    def describe(self) -> dict:
        return {"netns": self.netns, "root_if": self.root_if, "ns_if": self.ns_if, "subnet": self.subnet,
                "root_addr": self.root_addr, "ns_addr": self.ns_addr}


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def remove_stale() -> None:
    """Remove the namespaces (and pairs) of benchmarks whose process is gone."""
    for name in namespaces():
        owner = name.removeprefix(NETNS_PREFIX)
        if name.startswith(NETNS_PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            Link(int(owner)).down()


def free_subnet(owner: int) -> str:
    """A /30 of POOL that no interface address overlaps, starting at one derived from `owner`."""
    subnets = list(ipaddress.ip_network(POOL).subnets(new_prefix=30))
    taken = _addresses()
    for i in range(len(subnets)):
        net = subnets[(owner + i) % len(subnets)]
        if not any(addr.network.overlaps(net) for addr in taken):
            return str(net)
    raise NetnsError(f"no free /30 left in {POOL}")


def _check_free(subnet: str) -> None:
    net = ipaddress.ip_network(subnet)
    for addr in _addresses():
        if addr.network.overlaps(net):
            raise NetnsError(f"subnet {subnet} overlaps {addr} already on this machine: choose another "
                             "with --subnet")


def _addresses() -> list[ipaddress.IPv4Interface]:
    out = ip("-4", "-o", "addr", "show").stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]))
    return found


def _kill(pid: int, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            try:
                os.waitpid(pid, os.WNOHANG)  # our own child: reap it
            except ChildProcessError:
                pass
            time.sleep(0.05)


# --------------------------------------------------------------------------- services in the netns


class NetnsSshd(Sshd):
    """The lab's private sshd, listening on the namespace's address, run inside it."""

    def __init__(self, directory: Path, link: Link, port: int | None = None):
        super().__init__(directory, port)
        self.link = link

    @property
    def host(self) -> str:
        return self.link.ns_addr

    def prepare(self) -> None:
        super().prepare()  # keys, authorized_keys; config and known_hosts rewritten for our host
        text = self.config.read_text().replace("ListenAddress 127.0.0.1", f"ListenAddress {self.host}")
        self.config.write_text(text)
        host_pub = " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub}\n")

    def command(self) -> list[str]:
        return [*self.link.exec_prefix(), *super().command()]

    def healthy(self) -> bool:
        return ssh_banner(self.host, self.port)


class NetnsGlanceSite(GlanceSite):
    """A lab Glance site bound to the namespace's address, run inside the namespace."""

    def __init__(self, name: str, directory: Path, venv: Path, pristine_db: Path, link: Link,
                 port: int | None = None):
        super().__init__(name, directory, venv, pristine_db, port)
        self.link = link

    @property
    def host(self) -> str:
        return self.link.ns_addr

    @property
    def glance_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prepare(self) -> None:
        super().prepare()
        (self.config_dir / "glance-api.conf").write_text(GLANCE_API_CONF.format(
            name=self.name, host=self.host, port=self.port, dir=self.dir))
        (self.config_dir / "gunicorn.conf.py").write_text(GUNICORN_CONF.format(
            name=self.name, host=self.host, port=self.port))

    def command(self) -> list[str]:
        return [*self.link.exec_prefix(), *super().command()]

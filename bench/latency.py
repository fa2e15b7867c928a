"""Latency for the benchmark: the destination's head node reached through bench.delay_proxy.

`proxied(dest, proxy, directory)` is the same destination with every ssh connection going
through the proxy (127.0.0.1:proxy.port, a known_hosts line for that address); its Glance API
is reached directly (only the head node's sshd sits behind the proxy). `proxy_overhead`
measures the copy ceiling directly and through the proxy at 0 ms. The benchmark runs the proxy
as a process of its own (ProxyProcess).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from bench import flows
from bench.delay_proxy import DEFAULT_BUFFER, DelayProxy
from bench.destinations import Destination
from bench.measure import Bytes

PROXY_HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
OVERHEAD_REPEAT = 3  # ceiling runs each way (direct, proxied), alternating; the median is kept


def known_hosts_for(known_hosts: Path, host: str, port: int, out: Path) -> Path:
    """A copy of `known_hosts` whose first key is also listed for [host]:port."""
    lines = known_hosts.read_text().splitlines()
    key = " ".join(lines[0].split()[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([*lines, f"[{host}]:{port} {key}"]) + "\n")
    return out


def proxied(dest: Destination, proxy: DelayProxy | ProxyProcess, directory: Path) -> Destination:
    """`dest` with its head node's ssh reached through `proxy` (started, in front of dest's sshd)."""
    known = known_hosts_for(dest.known_hosts, PROXY_HOST, proxy.port, directory / "known_hosts")
    return dataclasses.replace(dest, name=f"{dest.name}+{proxy.rtt_ms:g}ms", host=PROXY_HOST,
                               port=proxy.port, known_hosts=known)


class ProxyProcess:
    """bench.delay_proxy in a process of its own (`python -m bench.delay_proxy`), so the benchmark's
    own threads (its pipe into ssh, its memory sampler) never hold the proxy up on the GIL.
    Same face as DelayProxy: start()/stop(), a context manager, .port, .connections, held_peak()."""

    def __init__(self, target: tuple[str, int], rtt_ms: float, listen_host: str = PROXY_HOST,
                 buffer_bytes: int = DEFAULT_BUFFER):
        self.target, self.rtt_ms, self.listen_host, self.buffer_bytes = target, rtt_ms, listen_host, buffer_bytes
        self.port = self.connections = self.peak_held = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ProxyProcess":
        argv = [sys.executable, "-m", "bench.delay_proxy", "--listen", f"{self.listen_host}:0",
                "--target", f"{self.target[0]}:{self.target[1]}", "--rtt-ms", str(self.rtt_ms),
                "--buffer-bytes", str(self.buffer_bytes)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO)
        line = self.proc.stdout.readline()  # "delay proxy HOST:PORT -> ..."
        if not line.startswith("delay proxy "):
            self.stop()
            raise RuntimeError(f"bench.delay_proxy did not start: {line!r}")
        self.port = int(line.split()[2].rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        with contextlib.suppress(ValueError, IndexError):
            stats = json.loads(out.strip().splitlines()[-1])
            self.connections, self.peak_held = stats["connections"], stats["peak_held_bytes"]

    def held_peak(self) -> int:
        return self.peak_held

    def __enter__(self) -> "ProxyProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def proxy_for(dest: Destination, rtt_ms: float) -> ProxyProcess:
    """A proxy process (not started) in front of `dest`'s head node sshd."""
    return ProxyProcess(target=(dest.host, dest.port), rtt_ms=rtt_ms)


def proxy_overhead(dest: Destination, path: Path, env: dict, cipher: str, directory: Path,
                   ssh_log: Path) -> dict:
    """The ssh ceiling (one stream, unshaped) of `path` directly and through the proxy at 0 ms,
    OVERHEAD_REPEAT times each, alternating; the overhead is the median of the pairs' ratios."""
    directory.mkdir(parents=True, exist_ok=True)
    direct, through = [], []
    with proxy_for(dest, 0.0) as proxy:
        via = proxied(dest, proxy, directory)
        for _ in range(OVERHEAD_REPEAT):
            for target, out in ((dest, direct), (via, through)):
                r = flows.ceiling(target, path, None, env, cipher, Bytes(ssh_log, dest.link), directory)
                out.append(r["wall_s"])
    paired = statistics.median(p / d for d, p in zip(direct, through))  # pairs ran back to back
    return {"bytes": flows.allocated_bytes(path), "direct_s": statistics.median(direct),
            "proxy_s": statistics.median(through), "direct_runs_s": direct, "proxy_runs_s": through,
            "overhead": paired - 1, "link": dest.name}

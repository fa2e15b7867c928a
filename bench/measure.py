"""What the benchmark measures: bytes ssh sent, link counters, peak memory of a process tree."""

from __future__ import annotations

import os
import re
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path

MB = 1e6
SSH_SHIM = """#!/bin/sh
# benchmark shim: the real ssh, logging (not printing) what it transferred, see bench/measure.py.
# migratio gives its children a minimal environment (no BENCH_SSH_LOG): they find the log in log-path.
log="${{BENCH_SSH_LOG:-$(cat {log_path} 2>/dev/null)}}"
exec {ssh} -E "${{log:-/dev/null}}" -o LogLevel=VERBOSE "$@"
"""
LOG_PATH = "log-path"  # the current flow's ssh log, for the shim
TRANSFERRED_RE = re.compile(r"Transferred: sent (\d+), received (\d+) bytes")


# --------------------------------------------------------------------------- bytes


def write_ssh_shim(directory: Path, ssh: str = "/usr/bin/ssh") -> Path:
    """A directory holding an `ssh` that execs the real one with `-E $BENCH_SSH_LOG -o LogLevel=VERBOSE`.

    Put first on PATH, it makes every ssh client (ours, rsync's, the worker's rsync's) append
    its "Transferred: sent N, received M bytes" line to $BENCH_SSH_LOG, or to the log named in
    `log-path` beside it (set by `shim_env`) for children that get a minimal environment. It
    execs, so it adds no process and no copy to the data path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "ssh"
    shim.write_text(SSH_SHIM.format(ssh=ssh, log_path=shlex.quote(str(directory / LOG_PATH))))
    shim.chmod(0o755)
    return directory


def shim_env(shim_dir: Path, ssh_log: Path, base: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{shim_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    env["BENCH_SSH_LOG"] = str(ssh_log)
    (shim_dir / LOG_PATH).write_text(str(ssh_log))  # for children that do not get BENCH_SSH_LOG
    return env


def ssh_transferred(log: Path) -> dict[str, int]:
    """Sum of what every ssh client that logged to `log` sent and received (bytes, encrypted)."""
    sent = received = sessions = 0
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    for match in TRANSFERRED_RE.finditer(text):
        sent += int(match.group(1))
        received += int(match.group(2))
        sessions += 1
    return {"sent": sent, "received": received, "sessions": sessions}


class Bytes:
    """Counts one flow's bytes: the ssh clients' own totals, and the veth counters if there is a link."""

    def __init__(self, ssh_log: Path, link=None):
        self.ssh_log, self.link = ssh_log, link
        self.before = None

    def __enter__(self) -> "Bytes":
        self.ssh_log.unlink(missing_ok=True)
        self.before = self.link.counters() if self.link else None
        return self

    def __exit__(self, *exc) -> None:
        self.after = self.link.counters() if self.link else None

    def result(self) -> dict:
        ssh = ssh_transferred(self.ssh_log)
        out = {"ssh_sent": ssh["sent"], "ssh_received": ssh["received"], "ssh_sessions": ssh["sessions"]}
        if self.before is not None:
            out["link_sent"] = self.after["tx_bytes"] - self.before["tx_bytes"]
            out["link_received"] = self.after["rx_bytes"] - self.before["rx_bytes"]
        out["bytes_sent"] = out.get("link_sent", out["ssh_sent"])
        out["bytes_source"] = "veth counters" if self.before is not None else "ssh -E log"
        return out


# --------------------------------------------------------------------------- memory


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    children, todo, found = _children_map(), [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, VmHWM) of a process in KiB; PSS splits shared pages between sharers (a fork's pages
    count once in a sum), VmHWM is the process's own peak RSS."""
    pss = hwm = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        pass
    return pss, hwm


@dataclass
class Peak:
    tree_pss_kib: int = 0      # peak of the summed PSS of the process and all its descendants
    process_hwm_kib: int = 0   # largest VmHWM (peak RSS) of any one process of the tree
    processes: int = 0         # processes in the tree at the PSS peak
    samples: int = 0


class TreeSampler:
    """Samples the memory of a process and all its descendants every `interval` s; keeps the peaks.

    (Not wait4's ru_maxrss: a child's counts the parent's pages it was forked with, e.g. the
    benchmark's own 90 MB before `exec ssh`.)
    """

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid, self.interval = pid, interval
        self.peak = Peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"memory-{pid}", daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        pids = tree(self.pid)
        usage = [memory_kib(p) for p in pids]
        total = sum(pss for pss, _ in usage)
        peak = self.peak
        peak.samples += 1
        peak.process_hwm_kib = max([peak.process_hwm_kib, *(hwm for _, hwm in usage)])
        if total > peak.tree_pss_kib:
            peak.tree_pss_kib, peak.processes = total, len(pids)

    def result(self) -> dict:
        return {"peak_rss_kib": self.peak.process_hwm_kib, "peak_tree_pss_kib": self.peak.tree_pss_kib,
                "memory_samples": self.peak.samples}


def mb(kib: int | None) -> float | None:
    return None if kib is None else round(kib * 1024 / MB, 1)


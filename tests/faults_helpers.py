"""Fault injection for tests/test_faults_*.py: real processes, real signals, real services.

- FaultRedis: a private redis-server that persists every write (AOF) and wants a password, so a
  restart keeps the queue and the jobs (as a production Redis does) and secrets are in play.
- CountingProxy: a TCP relay in front of the head node's sshd that counts the bytes each way
  and can cut every connection (a dropped link).
- Worker: `migratio worker` as systemd runs it (own session, stderr to a file); `kill_all`
  SIGKILLs it with every descendant at once, as systemd's cgroup kill does.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from support.lab.services import HOST, REPO, RedisServer, redis_ping
from tests import waiting

# tests.waiting.wait_for, with twice its default timeout: the fault tests restart whole workers
wait_for = functools.partial(waiting.wait_for, timeout=120)


# -- Redis


class FaultRedis(RedisServer):
    """redis-server with a password and appendfsync always: a restart loses nothing."""

    name = "redis"

    def __init__(self, directory: Path, password: str, port: int | None = None):
        super().__init__(directory, port)
        self.password = password

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{HOST}:{self.port}/0"

    def options(self) -> list[str]:
        return ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--requirepass", self.password]

    def healthy(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                data = b""
                while data.count(b"\r\n") < 2:
                    chunk = s.recv(64)
                    if not chunk:
                        return False
                    data += chunk
                return data.endswith(b"+PONG\r\n")
        except OSError:
            return False

    def down(self) -> bool:
        return not redis_ping(HOST, self.port) and not self.healthy()


# -- a byte-counting TCP relay


class CountingProxy:
    """Relays 127.0.0.1:<port> to `target`; counts bytes client->server (`up`) and back (`down`)."""

    def __init__(self, target_port: int, host: str = HOST):
        self.target = (host, target_port)
        self.up = self.down = 0
        self._pumps = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def idle(self) -> bool:
        """No connection open: everything a dead client had sent has been relayed (and counted)."""
        with self._lock:
            return self._pumps == 0

    def drop(self) -> int:
        """Cut every open connection (both sides), like a link that went away; returns how many."""
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return len(conns) // 2

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.drop()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
                self._pumps += 2
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(chunk))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._pumps -= 1


# -- processes


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != b"Z":
                found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


class Worker:
    """`migratio --config FILE worker` in its own session; stderr (its log) kept in a file."""

    def __init__(self, config_file: Path, stderr_file: Path, env: dict[str, str] | None = None):
        self.stderr_file = stderr_file
        with open(stderr_file, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "migratio.cli", "--config", str(config_file), "worker"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        self.pid = self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""

    def running(self, program: str) -> list[int]:
        """Descendants whose command is `program` (e.g. "rsync"), local side only."""
        return [pid for pid in descendants(self.pid)
                if (argv := cmdline(pid)) and Path(argv[0]).name == program and "--server" not in argv]

    def parent_of(self, pid: int) -> int:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])

    def kill_all(self) -> list[int]:
        """SIGKILL the worker and every descendant at once (systemd's cgroup kill); returns them."""
        pids = [self.pid, *descendants(self.pid)]
        for pid in pids:  # freeze first, so nothing forks or reacts while the others die
            _signal(pid, signal.SIGSTOP)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        wait_for(lambda: not any(alive(p) for p in pids), "the killed processes to be gone", timeout=30)
        return pids

    def terminate(self) -> None:
        """SIGTERM to the worker only (what systemctl stop sends with KillMode=mixed)."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Teardown: whatever is left of this worker goes (it is ours)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)  # cold: do not wait for a job
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        pids = [self.pid, *descendants(self.pid)] if self.proc.poll() is None else descendants(self.pid)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=15)


def kill_matching(text: str) -> list[int]:
    """SIGKILL processes whose command line contains `text` (a path unique to one test)."""
    pids = [int(e) for e in os.listdir("/proc") if e.isdigit() and any(text in a for a in cmdline(int(e)))]
    for pid in pids:
        for child in descendants(pid):
            _signal(child, signal.SIGKILL)
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

"""Whether a worker process still runs: a heartbeat key per worker, named by a token of its own.

Each `migratio worker` process picks a random token, names its RQ worker after it and keeps the
key `<ns>:migratio:alive:<token>` (SET EX `ttl`, refreshed every `ttl / 6` s by a thread; deleted
when it stops). The value says where it runs: host, pid, process start time, the kernel's boot id
and its pid namespace. Locks (migratio.queue.locks) name the token of the worker whose job holds
them, and recovery (migratio.queue.recovery) reads the key of a started job's worker:

- the key is gone: the worker stopped (or has not reached Redis for `ttl` s);
- the key names this boot and this pid namespace: its pid says at once whether it still runs;
- otherwise (another host, another container): it runs until its key expires.

A hostname proves nothing: containers share hostnames, and a pid means something only in its
own pid namespace.
"""

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass

import redis

from migratio.queue.keys import alive_key

log = logging.getLogger("migratio.liveness")

ALIVE_TTL = 60  # seconds a worker counts as running after its last heartbeat


@dataclass(frozen=True)
class Process:
    """Where a process runs, and which one it is (pid + start time: pids are reused)."""

    host: str
    pid: int
    start: int  # clock ticks after boot; 0 when unknown
    boot: str  # the kernel's boot id; "" when unknown
    pidns: str  # its pid namespace; "" when unknown

    def encode(self) -> str:
        return " ".join((self.host, str(self.pid), str(self.start), self.boot or "-", self.pidns or "-"))

    @classmethod
    def decode(cls, text: str) -> "Process | None":
        parts = text.split()
        if len(parts) != 5 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        boot, pidns = ("" if p == "-" else p for p in parts[3:])
        return cls(parts[0], int(parts[1]), int(parts[2]), boot, pidns)

    def shares_pids_with(self, other: "Process") -> bool:
        """Both in one pid namespace of one running kernel: a pid means the same process to both."""
        return bool(self.boot and self.pidns) and (self.boot, self.pidns) == (other.boot, other.pidns)


def this_process() -> Process:
    pid = os.getpid()
    return Process(socket.gethostname(), pid, process_start(pid) or 0,
                   _read("/proc/sys/kernel/random/boot_id"), _link("/proc/self/ns/pid"))


def runs(pid: int, start: int) -> bool:
    """Whether the process (pid, start time) of this pid namespace still runs."""
    now = process_start(pid)
    return now is not None and (now == start or 0 in (now, start))


def worker_process(client: redis.Redis, namespace: str, token: str) -> Process | None:
    """The worker process named by `token` while its heartbeat lasts; None once it stopped."""
    value = client.get(alive_key(namespace, token))
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return Process.decode(text) or Process("?", 0, 0, "", "")  # unreadable: running, somewhere else


class Heartbeat:
    """One worker process's heartbeat key (see the module docstring)."""

    def __init__(self, client: redis.Redis, namespace: str, ttl: int = ALIVE_TTL, token: str | None = None):
        self.redis, self.namespace, self.ttl = client, namespace, ttl
        self.token = token or uuid.uuid4().hex
        self.key = alive_key(namespace, self.token)
        self.process = this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        """Beat now (a Redis error is raised), then every `ttl / 6` s from a thread until `stop`."""
        self.beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
        self._thread.start()
        return self

    def beat(self) -> None:
        self.redis.set(self.key, self.process.encode(), ex=self.ttl)

    def stop(self) -> None:
        """Stop beating and delete the key: whoever waits for this worker need not wait for its expiry."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.redis.delete(self.key)
        except redis.RedisError as exc:
            log.warning("worker %s: could not delete its heartbeat (%s); it expires within %ss", self.token,
                        exc, self.ttl)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(1.0 if failing else self.ttl / 6):
            try:
                self.beat()
            except redis.RedisError as exc:
                if not failing:
                    log.warning("worker %s: heartbeat not sent (%s); after %ss without one, others take over "
                                "the locks of its job", self.token, exc, self.ttl)
                failing = True
                continue
            if failing:
                log.info("worker %s: heartbeat sent again", self.token)
            failing = False


def process_start(pid: int) -> int | None:
    """Start time of a live process (clock ticks since boot), None if there is no such process.

    (pid, start time) names a process even when its pid is reused later.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return _alive_without_proc(pid)
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _alive_without_proc(pid: int) -> int | None:
    if os.path.isdir("/proc/self"):
        return None  # /proc works: the process does not exist
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""

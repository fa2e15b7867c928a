"""A Redis lock per (image, destination) so two jobs never migrate the same image at once.

The lock's value names its holder (`<token> <host> <pid> <process start time>`). A holder that
died without releasing it (a SIGKILLed work-horse) leaves the key behind until `ttl` runs out;
a job on the same host takes such a lock over at once when that process is gone, so a worker
restarted after a crash resumes its job without waiting for the expiry.
"""

import logging
import os
import socket
import threading
import time
import uuid

import redis
from redis import Redis

from migratio.pipeline.retry import MustWait
from migratio.queue import scripts
from migratio.queue.keys import lock_key

log = logging.getLogger("migratio.locks")

RELEASE_WAIT = 30.0  # seconds __exit__ keeps trying to release while Redis is away

class LockBusy(MustWait):
    """Another job holds the lock: this one waits (is retried) without using up a retry."""


class MigrationLock:
    """Held for a job's whole run; refreshed in the background, so `ttl` only bounds a crash."""

    def __init__(self, redis: Redis, namespace: str, image_id: str, dest: str, ttl: int,
                 host: str | None = None, pid: int | None = None):
        self.redis, self.ttl = redis, ttl
        self.key = lock_key(namespace, image_id, dest)
        self.what = f"image {image_id} to site {dest}"
        self.host = host or socket.gethostname()
        pid = pid or os.getpid()
        self.token = f"{uuid.uuid4().hex} {self.host} {pid} {process_start(pid) or 0}"
        self._release = scripts.load(redis, "delete_if_equal")
        self._extend = scripts.load(redis, "expire_if_equal")
        self._replace = scripts.load(redis, "replace_if_equal")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MigrationLock":
        if not self.redis.set(self.key, self.token, nx=True, ex=self.ttl) and not self._take_over():
            raise LockBusy(f"another job is already migrating {self.what}; will retry")
        self._thread = threading.Thread(target=self._refresh, daemon=True, name="lock-refresh")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + RELEASE_WAIT
        while True:
            try:
                self._release(keys=[self.key], args=[self.token])
                return
            except redis.RedisError as error:
                if time.monotonic() > deadline:
                    log.warning("could not release the lock %s (%s); it expires within %ss", self.key, error, self.ttl)
                    return
                time.sleep(1.0)

    def _take_over(self) -> bool:
        """Take the lock of a holder that died on this host (same host, its process gone)."""
        held = self.redis.get(self.key)
        if held is None:
            return bool(self.redis.set(self.key, self.token, nx=True, ex=self.ttl))
        holder = held.decode("utf-8", "replace") if isinstance(held, bytes) else str(held)
        if not holder_is_dead(holder, self.host):
            return False
        if not self._replace(keys=[self.key], args=[holder, self.token, self.ttl]):
            return False
        log.warning("took over the lock for %s from a process that died (%s)", self.what, _who(holder))
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._extend(keys=[self.key], args=[self.token, self.ttl])
            except Exception:
                pass  # Redis away for a moment: the next round tries again


def holder_is_dead(value: str, host: str) -> bool:
    """True only for a lock value written by a process of this host that no longer runs."""
    parts = value.split()
    if len(parts) != 4 or parts[1] != host or not parts[2].isdigit() or not parts[3].isdigit():
        return False  # another host (or an unknown format): only the expiry frees it
    pid, started = int(parts[2]), int(parts[3])
    now = process_start(pid)
    if now is None:
        return True
    return now != 0 and started != 0 and now != started  # the pid was reused by another process


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


def _who(value: str) -> str:
    parts = value.split()
    return f"pid {parts[2]} on {parts[1]}" if len(parts) == 4 else "unknown holder"

"""A Redis lock per (image, destination) so two jobs never migrate the same image at once.

The lock's value names its holder: `<random> <host> <pid> <process start time> <worker token>`,
the token being that of the worker whose job holds it (see migratio.queue.liveness). A holder
that died without releasing it (a SIGKILLed work-horse) leaves the key behind; another job takes
it over only when the holder certainly stopped:

- its worker's heartbeat key is gone (the worker stopped, on any host), or
- its worker is this job's own worker, or runs in this pid namespace, and the holding process
  (pid + start time) is gone (a worker restarted after a crash resumes its job at once).

Otherwise (alive, or on another host or in another container whose heartbeat still runs) the job
waits; `ttl` bounds only the wait for a lock in an older format.

The holder refreshes the lock in the background and says so when it cannot. A lock found taken
over, expired or not refreshed for `ttl` s is lost: `check` then raises LockLost, which the job
runs before each step, so that it stops before it registers anything.
"""

import logging
import threading
import time
import uuid

import redis
from redis import Redis

from migratio.errors import TransientError
from migratio.pipeline.retry import MustWait
from migratio.queue import scripts
from migratio.queue.keys import lock_key
from migratio.queue.liveness import Heartbeat, runs, this_process, worker_process

log = logging.getLogger("migratio.locks")

RELEASE_WAIT = 30.0  # seconds __exit__ keeps trying to release while Redis is away
RETRY_REFRESH = 5.0  # seconds between refresh attempts while Redis does not answer


class LockBusy(MustWait):
    """Another job holds the lock: this one waits (is retried) without using up a retry."""


class LockLost(TransientError):
    """The job's lock was taken over, expired or could not be refreshed: it stops before its next step."""


class MigrationLock:
    """Held for a job's whole run; refreshed in the background, so `ttl` only bounds a crash.

    `heartbeat` is the worker's (see migratio.queue.liveness); without one (a process that is no
    worker) the lock keeps a heartbeat of its own while it is held.
    """

    def __init__(self, redis: Redis, namespace: str, image_id: str, dest: str, ttl: int,
                 heartbeat: Heartbeat | None = None):
        self.redis, self.namespace, self.ttl = redis, namespace, ttl
        self.key = lock_key(namespace, image_id, dest)
        self.what = f"image {image_id} to site {dest}"
        self._own_heartbeat = heartbeat is None
        self.heartbeat = heartbeat or Heartbeat(redis, namespace)
        me = this_process()
        self.token = f"{uuid.uuid4().hex} {me.host} {me.pid} {me.start} {self.heartbeat.token}"
        self.lost: str | None = None  # why the lock is no longer ours
        self._refreshed = time.monotonic()
        self._release = scripts.load(redis, "delete_if_equal")
        self._extend = scripts.load(redis, "expire_if_equal")
        self._replace = scripts.load(redis, "replace_if_equal")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MigrationLock":
        if self._own_heartbeat:
            self.heartbeat.start()
        try:
            if not self.redis.set(self.key, self.token, nx=True, ex=self.ttl) and not self._take_over():
                raise LockBusy(f"another job is already migrating {self.what}; will retry")
        except BaseException:
            if self._own_heartbeat:
                self.heartbeat.stop()
            raise
        self._refreshed = time.monotonic()
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
                break
            except redis.RedisError as error:
                if time.monotonic() > deadline:
                    log.warning("could not release the lock %s (%s); it expires within %ss", self.key, error, self.ttl)
                    break
                time.sleep(1.0)
        if self._own_heartbeat:
            self.heartbeat.stop()

    def check(self, before: str = "its next step") -> None:
        """Raise LockLost unless the lock is still ours: asked of Redis, or, while Redis does not
        answer, judged by the last refresh."""
        if self.lost is None:
            try:
                held = self.redis.get(self.key)
            except redis.RedisError:
                pass  # the refresh thread counts the time without an answer
            else:
                if _text(held) != self.token:
                    self._lose(held)
        if self.lost is not None:
            raise LockLost(f"lost the lock for {self.what} ({self.lost}); stopped before {before}")

    def _take_over(self) -> bool:
        """Take the lock of a holder that certainly stopped (see the module docstring)."""
        held = self.redis.get(self.key)
        if held is None:
            return bool(self.redis.set(self.key, self.token, nx=True, ex=self.ttl))
        holder = _text(held)
        if not holder_is_dead(holder, self.redis, self.namespace, self.heartbeat.token):
            return False
        if not self._replace(keys=[self.key], args=[holder, self.token, self.ttl]):
            return False
        log.warning("took over the lock for %s from a job that stopped (%s)", self.what, _who(holder))
        return True

    def _refresh(self) -> None:
        failing = False
        while not self._stop.wait(min(self.ttl / 3, RETRY_REFRESH) if failing else self.ttl / 3):
            try:
                refreshed = self._extend(keys=[self.key], args=[self.token, self.ttl])
                held = None if refreshed else self.redis.get(self.key)
            except redis.RedisError as exc:
                if not failing:
                    log.warning("could not refresh the lock for %s (%s); trying again every %.0fs", self.what, exc,
                                min(self.ttl / 3, RETRY_REFRESH))
                failing = True
                if time.monotonic() - self._refreshed >= self.ttl:
                    self.lost = self.lost or f"not refreshed for {self.ttl} s: Redis did not answer"
                    log.error("job lock: lost the lock for %s (%s)", self.what, self.lost)
                    return
                continue
            if not refreshed:
                self._lose(held)
                return
            if failing:
                log.info("refreshed the lock for %s again", self.what)
            failing, self._refreshed = False, time.monotonic()

    def _lose(self, held: object) -> None:
        if self.lost is None:
            self.lost = "it expired" if held is None else "another job holds it now"
            log.error("job lock: lost the lock for %s (%s)", self.what, self.lost)


def holder_is_dead(value: str, client: Redis, namespace: str, own_worker: str) -> bool:
    """True only when the holder a lock value names certainly stopped (see the module docstring).

    `own_worker`: the token of the asking job's worker.
    """
    parts = value.split()
    if len(parts) != 5 or not parts[2].isdigit() or not parts[3].isdigit():
        return False  # another format (an older migratio): only its expiry frees it
    pid, start, token = int(parts[2]), int(parts[3]), parts[4]
    if token != own_worker:
        worker = worker_process(client, namespace, token)
        if worker is None:
            return True  # its worker's heartbeat is gone
        if not worker.shares_pids_with(this_process()):
            return False  # another host or container: alive while its heartbeat is
    return not runs(pid, start)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _who(value: str) -> str:
    parts = value.split()
    return f"pid {parts[2]} on {parts[1]}, worker {parts[4]}" if len(parts) == 5 else "unknown holder"

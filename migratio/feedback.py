"""Status lines back to Atmosphere, as jobs for its `UpdateMigrationJobStatusWorker`.

Atmosphere runs `Atmosphere::UpdateMigrationJobStatusWorker` (queue `feedback`, retry false)
with args [image_uuid, source_site_id, destination_site_id, status_text] and appends the text
to the migration's status. We push those jobs exactly as Sidekiq's client would.
"""

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import sidekiq
from .status import JobInfo

log = logging.getLogger("migratio.feedback")

MAX_LINE = 300  # Atmosphere shows the line as it is; failure reasons are cut to this length


def feedback_client(redis_url: str) -> redis.Redis:
    """A client that fails fast: a status line must never hold a migration up for long."""
    return redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False)


class FeedbackSink:
    """A StatusSink pushing each line to `<namespace>:queue:feedback` for Atmosphere.

    Best effort: when Redis is away, lines wait in a bounded in-order buffer and are retried
    with backoff on the next line and by `flush`; nothing here ever raises into a migration,
    and lines that cannot be delivered are logged.
    """

    def __init__(self, client: redis.Redis, namespace: str, redact: Callable[[str], str] = str, *,
                 timestamps: sidekiq.Timestamps = "seconds", max_buffer: int = 1000,
                 max_backoff: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.client, self.namespace, self.redact = client, namespace, redact
        self.timestamps, self.max_buffer, self.max_backoff = timestamps, max_buffer, max_backoff
        self.clock, self.sleep = clock, sleep
        self._buffer: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.0
        self._dropped = 0
        self._failing = False

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def line(self, text: str) -> str:
        """One short, redacted line."""
        text = self.redact(" ".join(str(text).split()))
        return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."

    def emit(self, job: JobInfo, text: str) -> None:
        args = [job.image_id, job.source_site, job.dest_site, self.line(text)]
        payload = sidekiq.job_payload(sidekiq.FEEDBACK_CLASS, args, sidekiq.FEEDBACK_QUEUE,
                                      retry=False, timestamps=self.timestamps)
        with self._lock:
            self._append(payload)
            if self.clock() >= self._retry_at:
                self._drain()

    def flush(self, timeout: float) -> bool:
        """Deliver buffered lines, retrying up to `timeout` seconds; False if some are left."""
        deadline = self.clock() + timeout
        while True:
            with self._lock:
                if self.clock() >= self._retry_at:
                    self._drain()
                if not self._buffer:
                    return True
                now = self.clock()
                if now >= deadline:
                    log.warning("feedback: %d status line(s) for Atmosphere not delivered after %.0fs "
                                "(Redis unreachable); last: %s", len(self._buffer), timeout,
                                self._buffer[-1]["args"][3])
                    return False
                wait = min(max(self._retry_at - now, 0.05), deadline - now)
            self.sleep(wait)

    def _append(self, payload: dict[str, Any]) -> None:
        if len(self._buffer) >= self.max_buffer:
            lost = self._buffer.popleft()
            self._dropped += 1
            if self._dropped == 1:
                log.warning("feedback: buffer full (%d lines), dropping the oldest: %s",
                            self.max_buffer, lost["args"][3])
        self._buffer.append(payload)

    def _drain(self) -> None:
        while self._buffer:
            try:
                sidekiq.push(self.client, self.namespace, self._buffer[0], self.timestamps)
            except (redis.RedisError, OSError) as exc:
                self._backoff = min(self.max_backoff, max(1.0, self._backoff * 2))
                self._retry_at = self.clock() + self._backoff
                if not self._failing:
                    log.warning("feedback: cannot push status lines to Atmosphere (%s); "
                                "buffering them and retrying", exc)
                self._failing = True
                return
            self._buffer.popleft()
        if self._failing:
            log.info("feedback: Redis answers again; buffered status lines delivered%s",
                     f" ({self._dropped} dropped: buffer full)" if self._dropped else "")
        self._failing, self._backoff, self._retry_at, self._dropped = False, 0.0, 0.0, 0

"""Status lines back to Atmosphere, as jobs for its `UpdateMigrationJobStatusWorker`.

Atmosphere runs `Atmosphere::UpdateMigrationJobStatusWorker` (queue `feedback`, retry false)
with args [image_uuid, source_site_id, destination_site_id, status_text]: it reads the
migration's row, appends " <text>" and saves it, without a lock, on a pool of threads, and its
admin page shows `status.lines.last`. So every line ends with "\\n", and two lines of one
migration (image, source, destination) are never pushed closer than `feedback_interval`
seconds apart: two saves of one row racing would lose a line, or fail on the row's unique index.

Pacing lives in Redis (scripts in migratio/queue/lua/), so it holds across a worker's work-horses,
across workers, and across crashes:
- a line is pushed at once when nothing of its migration waits and the interval has passed;
- otherwise it waits in the migration's pending list, where a newer line supersedes a waiting
  progress line (dropped) but never a final line ("Migration finished", "Migration failed",
  ...: see migratio.pipeline.status.FINAL_PREFIXES); the migration is then in the `due` set;
- `FeedbackRelay`, a thread of every worker's main process, pushes due lines as their time
  comes. A work-horse therefore never waits for the interval: its job ends at once, and its
  last line goes out at most one interval later (from any worker of the site, also after a
  restart).
Only jobs that came from Atmosphere get lines (`JobInfo.feedback`): Atmosphere's worker raises
for a template it does not know.
"""

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import redis

from migratio.pipeline.recorder import NullRecorder, Recorder
from migratio.pipeline.status import JobInfo, is_final
from migratio.queue import scripts, sidekiq
from migratio.queue.keys import FEEDBACK_QUEUE, FeedbackKeys

log = logging.getLogger("migratio.feedback")

MAX_LINE = 300  # Atmosphere shows the line as it is; failure reasons are cut to this length
PENDING_TTL = 7 * 86400  # seconds waiting lines are kept when no worker is left to send them
DEFAULT_INTERVAL = 2.0


def wants_feedback(meta: dict) -> bool:
    """Whether a job's status lines go to Atmosphere: it came from Atmosphere, or asked to."""
    return meta.get("source") == "atmosphere" or bool(meta.get("feedback"))


def member(job: JobInfo) -> str:
    return f"{job.image_id}:{job.source_site}:{job.dest_site}"


@dataclass(frozen=True)
class _Line:
    member: str
    head: str  # the Sidekiq job's JSON without its closing brace (the script adds enqueued_at)
    final: bool
    text: str


class FeedbackSink:
    """A StatusSink pushing each line of an Atmosphere job to `<namespace>:queue:feedback`.

    Best effort: when Redis is away, lines wait in a bounded in-order buffer and are retried
    with backoff on the next line and by `flush`; nothing here ever raises into a migration,
    and lines that cannot be delivered are logged.
    """

    def __init__(self, client: redis.Redis, namespace: str, redact: Callable[[str], str] = str, *,
                 interval: float = DEFAULT_INTERVAL, timestamps: sidekiq.Timestamps = "seconds",
                 max_buffer: int = 1000, max_backoff: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 metrics: Recorder | None = None):
        self.client, self.namespace, self.redact = client, namespace, redact
        self.metrics = metrics or NullRecorder()  # counts lines sent, made to wait, dropped
        self.interval_ms = int(interval * 1000)
        self.timestamps, self.max_buffer, self.max_backoff = timestamps, max_buffer, max_backoff
        self.clock, self.sleep = clock, sleep
        self.keys = FeedbackKeys(namespace)
        self._submit = scripts.load(client, "feedback_submit")
        self._buffer: deque[_Line] = deque()
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.0
        self._dropped = 0
        self._failing = False

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def line(self, text: str) -> str:
        """One short, redacted line, ending in a newline as Atmosphere expects."""
        text = self.redact(" ".join(str(text).split()))
        text = text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."
        return text + "\n"

    def emit(self, job: JobInfo, text: str) -> None:
        if not job.feedback:
            return
        line = self.line(text)
        args = [job.image_id, job.source_site, job.dest_site, line]
        payload = sidekiq.job_payload(sidekiq.FEEDBACK_CLASS, args, FEEDBACK_QUEUE,
                                      retry=False, timestamps=self.timestamps)
        with self._lock:
            self._append(_Line(member(job), sidekiq.dump(payload)[:-1], is_final(text), line))
            if self.clock() >= self._retry_at:
                self._drain()
            if self._buffer:  # Redis unreachable: it waits here
                self.metrics.feedback_lines("buffered")

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
                                self._buffer[-1].text.rstrip())
                    return False
                wait = min(max(self._retry_at - now, 0.05), deadline - now)
            self.sleep(wait)

    def _append(self, line: _Line) -> None:
        if len(self._buffer) >= self.max_buffer:
            lost = self._buffer.popleft()
            self._dropped += 1
            self.metrics.feedback_lines("dropped")
            if self._dropped == 1:
                log.warning("feedback: buffer full (%d lines), dropping the oldest: %s",
                            self.max_buffer, lost.text.rstrip())
        self._buffer.append(line)

    def _send(self, line: _Line) -> None:
        now = time.time()
        pushed = self._submit(keys=self.keys.for_member(line.member),
                              args=[line.member, line.head, "1" if line.final else "0", int(now * 1000),
                                    self.interval_ms, stamp(now, self.timestamps), PENDING_TTL])
        # 1: pushed; 0: waits for its migration's interval (the relay sends it); 2: and a waiting
        # progress line it superseded is dropped
        self.metrics.feedback_lines("sent" if pushed == 1 else "buffered")
        self.metrics.feedback_lines("dropped", int(pushed == 2))

    def _drain(self) -> None:
        while self._buffer:
            try:
                self._send(self._buffer[0])
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


class FeedbackRelay:
    """Pushes the lines that waited for their migration's interval, when it has passed.

    Runs as a thread of the worker's main process (`start`/`stop`); `deliver_due` is one round.
    """

    def __init__(self, client: redis.Redis, namespace: str, interval: float = DEFAULT_INTERVAL, *,
                 timestamps: sidekiq.Timestamps = "seconds", poll: float = 0.1, metrics: Recorder | None = None):
        self.client, self.keys = client, FeedbackKeys(namespace)
        self.metrics = metrics or NullRecorder()
        self.interval_ms, self.timestamps, self.poll = int(interval * 1000), timestamps, poll
        self._deliver = scripts.load(client, "feedback_deliver")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_due(self) -> int:
        """Push every line whose time has come; returns how many were pushed."""
        now = time.time()
        pushed = 0
        for raw in self.client.zrangebyscore(self.keys.due, "-inf", int(now * 1000), start=0, num=100):
            name = raw.decode() if isinstance(raw, bytes) else raw
            pushed += self._deliver(keys=self.keys.for_member(name),
                                    args=[name, int(now * 1000), self.interval_ms, stamp(now, self.timestamps)])
        self.metrics.feedback_lines("sent", pushed)
        return pushed

    def waiting(self) -> int:
        """Migrations with lines still waiting."""
        return int(self.client.zcard(self.keys.due))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="feedback-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the thread, then send what waits (each line's interval is still kept), for up to
        `timeout` seconds; what is left stays in Redis for the next worker to send."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while self.waiting() and time.monotonic() < deadline:
                self.deliver_due()
                time.sleep(self.poll)
            left = self.waiting()
        except redis.RedisError as exc:
            log.warning("feedback: could not send the waiting status lines (%s); "
                        "the next worker sends them", exc)
            return
        if left:
            log.info("feedback: %d migration(s) still have status lines waiting; "
                     "the next worker sends them", left)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.poll):
            try:
                self.deliver_due()
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("feedback: cannot send waiting status lines (%s); retrying", exc)
                failing = True
                self._stop.wait(1.0)


def stamp(now: float, timestamps: sidekiq.Timestamps) -> str:
    """`enqueued_at` as JSON text for the scripts, which splice it into the job."""
    return json.dumps(sidekiq.stamp(now, timestamps))

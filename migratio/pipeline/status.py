"""Status lines for humans (Atmosphere shows them as they are) and job meta for tools."""

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    image_id: str
    source_site: str
    dest_site: str
    feedback: bool = False  # its lines go to Atmosphere (a job Atmosphere pushed, or --feedback)


# The first words of the line that ends an attempt: Atmosphere's page must end on it, so the
# feedback pacing never drops one (see migratio.feedback).
FINISHED = "Migration finished"
ALREADY_PRESENT = "Image already present"
FAILED = "Migration failed"
REJECTED = "Migration rejected"
WILL_RETRY = "Migration attempt failed, will retry"
INTERRUPTED = "Migration interrupted"
WAITING = "Waiting"
FINAL_PREFIXES = (FINISHED, ALREADY_PRESENT, FAILED, REJECTED, WILL_RETRY, INTERRUPTED, WAITING + ":")


def is_final(text: str) -> bool:
    return text.startswith(FINAL_PREFIXES)


class StatusSink(Protocol):
    def emit(self, job: JobInfo, text: str) -> None: ...


class Meta(Protocol):
    """Where a job's machine-readable progress is kept (the RQ job's meta in production)."""

    def update(self, **fields: object) -> None: ...


class LogSink:
    """Writes status lines to the log; always part of the sinks."""

    def emit(self, job: JobInfo, text: str) -> None:
        log.info("job=%s image=%s dest=%s status: %s", job.job_id, job.image_id, job.dest_site, text)


class FanOut:
    """Sends each line to every sink; a failing sink is logged and skipped (best effort)."""

    def __init__(self, *sinks: StatusSink):
        self.sinks = sinks

    def emit(self, job: JobInfo, text: str) -> None:
        for sink in self.sinks:
            try:
                sink.emit(job, text)
            except Exception as exc:  # feedback must never fail a migration
                log.warning("job=%s status sink %s failed: %s", job.job_id, type(sink).__name__, exc)


class DictMeta:
    """In-memory Meta, for tests and one-off runs."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}

    def update(self, **fields: object) -> None:
        self.data.update(fields)


class RqMeta:
    """Meta stored in the RQ job's `meta` (what `migratio status` and `rq info` read)."""

    def __init__(self, job) -> None:
        self.job = job

    def update(self, **fields: object) -> None:
        self.job.meta.update(fields)
        try:
            self.job.save_meta()
        except Exception as exc:  # Redis away: progress is not worth failing the job
            log.warning("job=%s could not save meta: %s", self.job.id, exc)


class ProgressThrottle:
    """Says when a progress line is due: at most one per `percent` step or per `interval` s."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, percent: int = 10, interval: float = 30.0):
        self.clock, self.percent, self.interval = clock, percent, interval
        self.last_bucket = 0
        self.last_time = clock()

    def due(self, done: int, total: int | None) -> bool:
        now = self.clock()
        bucket = (100 * done // total) // self.percent if total else 0
        if bucket > self.last_bucket or now - self.last_time >= self.interval:
            self.last_bucket, self.last_time = bucket, now
            return True
        return False

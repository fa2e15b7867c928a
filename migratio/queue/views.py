"""Reading jobs back for operators: what `migratio status` shows, and the dead letters."""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.rate_limit import RateLimitRegistry

from migratio.errors import InvalidInput
from migratio.queue.keys import dead_key

REGISTRIES = ("started", "queued", "rate_limited", "scheduled", "failed", "finished")


@dataclass(frozen=True)
class JobView:
    id: str
    state: str
    image_id: str
    dest: str
    step: str | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    rate: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None

    @property
    def percent(self) -> int | None:
        if self.bytes_total and self.bytes_done is not None:
            return min(100, 100 * self.bytes_done // self.bytes_total)
        return None

    @property
    def eta(self) -> float | None:
        """Seconds left in the current step at the last recorded rate."""
        if self.bytes_total and self.bytes_done is not None and self.rate:
            return max(0.0, (self.bytes_total - self.bytes_done) / self.rate)
        return None


def view(job: Job, state: str | None = None) -> JobView:
    meta = job.meta or {}
    args = list(job.args or ()) + ["?", "?"]
    state = state or status_name(job.get_status(refresh=False)) or str(meta.get("state") or "unknown")
    error = meta.get("error")
    if state == "failed" and not error:
        error = _last_line(job)
    result = job.return_value(refresh=False) if state == "finished" else None
    return JobView(job.id, state, str(args[0]), str(args[1]), meta.get("step"), meta.get("bytes_done"),
                   meta.get("bytes_total"), meta.get("rate"), error, result, dict(meta),
                   job.started_at, job.ended_at, job.worker_name)


def status_name(status: object) -> str | None:
    """RQ's JobStatus (an Enum) as its plain value: 'failed', not 'JobStatus.FAILED'."""
    return None if status is None else str(getattr(status, "value", status))


def get_view(queue: Queue, job_id: str) -> JobView:
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        raise InvalidInput(f"no job {job_id!r} (finished jobs are kept only for result_ttl)") from None
    return view(job)


def list_views(queue: Queue) -> list[JobView]:
    ids_by_state = {
        "queued": queue.get_job_ids(),
        "rate_limited": _rate_limited_ids(queue),  # waiting for a site's max_concurrent
        "scheduled": queue.scheduled_job_registry.get_job_ids(),
        "started": queue.started_job_registry.get_job_ids(),
        "failed": queue.failed_job_registry.get_job_ids(),
        "finished": queue.finished_job_registry.get_job_ids(),
    }
    views = []
    for state in REGISTRIES:
        for job in Job.fetch_many(ids_by_state[state], connection=queue.connection):
            if job is not None:
                views.append(view(job, state))
    return views


def _rate_limited_ids(queue: Queue) -> list[str]:
    ids = [i for registry in RateLimitRegistry.all(queue.connection) for i in registry.get_rate_limited_job_ids()]
    jobs = Job.fetch_many(ids, connection=queue.connection)
    return [job.id for job in jobs if job is not None and job.origin == queue.name]


def _last_line(job: Job) -> str | None:
    text = job.latest_result().exc_string if job.latest_result() else None
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def dead_letters(client, namespace: str, count: int = 100) -> list[dict[str, Any]]:
    """The newest `count` dead-letter entries (what an operator would inspect)."""
    return [json.loads(entry) for entry in client.lrange(dead_key(namespace), 0, count - 1)]

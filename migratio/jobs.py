"""Reading jobs back for operators: what `migratio status` shows."""

from dataclasses import dataclass, field
from typing import Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .errors import InvalidInput

REGISTRIES = ("queued", "scheduled", "started", "failed", "finished")


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

    @property
    def percent(self) -> int | None:
        if self.bytes_total and self.bytes_done is not None:
            return min(100, 100 * self.bytes_done // self.bytes_total)
        return None


def view(job: Job, state: str | None = None) -> JobView:
    meta = job.meta or {}
    args = list(job.args or ()) + ["?", "?"]
    state = state or str(job.get_status(refresh=False) or meta.get("state") or "unknown")
    error = meta.get("error")
    if state == "failed" and not error:
        error = _last_line(job)
    result = job.return_value(refresh=False) if state == "finished" else None
    return JobView(job.id, state, str(args[0]), str(args[1]), meta.get("step"), meta.get("bytes_done"),
                   meta.get("bytes_total"), meta.get("rate"), error, result, dict(meta))


def get_view(queue: Queue, job_id: str) -> JobView:
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        raise InvalidInput(f"no job {job_id!r} (finished jobs are kept only for result_ttl)") from None
    return view(job)


def list_views(queue: Queue) -> list[JobView]:
    ids_by_state = {
        "queued": queue.get_job_ids(),
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


def _last_line(job: Job) -> str | None:
    text = job.latest_result().exc_string if job.latest_result() else None
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None

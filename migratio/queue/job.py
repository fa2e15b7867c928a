"""The RQ job function. Workers bind their App before taking jobs."""

from typing import Any

from rq import get_current_job

from migratio.errors import MigratioError
from migratio.logs import job_log
from migratio.pipeline.status import RqMeta
from migratio.queue.feedback import wants_feedback
from migratio.queue.locks import LockBusy
from migratio.queue.migration import App, run_migration

_bound: list[App] = []


def bind_app(app: App) -> None:
    """Called by the worker at start; forked work-horses inherit it."""
    _bound[:] = [app]


def migrate(image_uuid: str, destination_site: str) -> dict[str, Any]:
    """Migrate one image from this site to `destination_site` (what `migratio migrate` enqueues)."""
    if not _bound:
        raise RuntimeError("migratio.queue.job.migrate runs only inside `migratio worker`")
    app, job = _bound[0], get_current_job()
    with job_log(app.config.log_dir, job.id, app.redact):  # log/jobs/<job_id>.log
        try:
            return run_migration(app, job.id, image_uuid, destination_site, RqMeta(job),
                                 retries_left=job.retries_left or 0, feedback=wants_feedback(job.meta))
        except LockBusy:
            if job.retries_left:
                job.retries_left += 1  # waiting for another job is not a failed attempt
            raise
        except MigratioError as exc:
            if not exc.retryable:
                job.retries_left = 0  # permanent: RQ must not retry it
            raise

"""The RQ job function. Workers bind their App before taking jobs."""

from rq import get_current_job
from rq.job import Job

from migratio.logs import job_log
from migratio.pipeline.retry import Decision, decide
from migratio.pipeline.status import RqMeta
from migratio.queue.feedback import wants_feedback
from migratio.queue.migration import App, run_migration

_bound: list[App] = []


def bind_app(app: App) -> None:
    """Called by the worker at start; forked work-horses inherit it."""
    _bound[:] = [app]


def migrate(image_uuid: str, destination_site: str) -> dict[str, object]:
    """Migrate one image from this site to `destination_site` (what `migratio migrate` enqueues)."""
    if not _bound:
        raise RuntimeError("migratio.queue.job.migrate runs only inside `migratio worker`")
    app, job = _bound[0], get_current_job()
    with job_log(app.config.log_dir, job.id, app.redact, app.config.log_format, image_uuid, destination_site):
        try:
            return run_migration(app, job.id, image_uuid, destination_site, RqMeta(job),
                                 retries_left=job.retries_left or 0, feedback=wants_feedback(job.meta),
                                 timeout=job.timeout)
        except Exception as exc:
            _count(job, decide(exc, job.retries_left))
            raise


def _count(job: Job, decision: Decision) -> None:
    """Set the job's retries_left so that RQ, which takes one off per failure, does what `decision` says."""
    if not decision.retried:
        job.retries_left = 0  # RQ must not run it again
    elif not decision.uses_attempt:
        job.retries_left += 1  # waiting for another job is not a failed attempt

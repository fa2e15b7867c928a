"""One migration: validate the job, take the lock, run the destination's pipeline, report."""

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

from redis import Redis
from rq.timeouts import JobTimeoutException

from migratio import ids
from migratio.conf.config import Config
from migratio.conf.sites import Site, load_site, site_path
from migratio.errors import InvalidInput, MigratioError, PermanentError, describe
from migratio.local.workdirs import job_dir
from migratio.logs import job_log_path
from migratio.pipeline.context import Context
from migratio.pipeline.recorder import UNKNOWN, NullRecorder, Outcome, Recorder
from migratio.pipeline.retry import Decision, decide
from migratio.pipeline.runner import Step, run_pipeline
from migratio.pipeline.services import Services
from migratio.pipeline.status import ALREADY_PRESENT, FINISHED, JobInfo, Meta, StatusSink
from migratio.queue.liveness import Heartbeat
from migratio.queue.locks import MigrationLock
from migratio.redact import Redactor
from migratio.steps import build_steps

log = logging.getLogger("migratio.migration")


@dataclass
class App:
    """Everything a worker needs to run jobs, built once at start."""

    config: Config
    redis: Redis
    services: Services
    status: StatusSink
    steps_for: Callable[[Site], list[Step]] = field(default=build_steps)  # tests pass their own
    redact: Callable[[str], str] = field(default_factory=Redactor)  # for the per-job log file
    metrics: Recorder = field(default_factory=NullRecorder)  # the worker's metrics (migratio.queue.metrics)
    heartbeat: Heartbeat | None = None  # the worker's (run_worker starts it); its locks name its token


class TimedOut(PermanentError):
    """RQ's job timeout ended the job: another attempt would run out of time the same way."""


def run_migration(app: App, job_id: str, image: object, dest: object, meta: Meta,
                  retries_left: int = 0, feedback: bool = False, timeout: int | None = None) -> dict[str, object]:
    """Run one migration; raises MigratioError on failure, after reporting it.

    With `feedback`, its status lines go to Atmosphere too (see migratio.feedback). `timeout`:
    the job's RQ job_timeout (config.yml's when not given), for the line that says it ran out.
    """
    info = JobInfo(job_id, str(image), app.config.name, str(dest), feedback)
    start, site = time.monotonic(), None
    timeout = timeout if timeout is not None else app.config.job_timeout
    try:
        image_id, site = ids.image_id(image), load_site(app.config.sites_dir, str(dest))
        steps = app.steps_for(site)
        info = JobInfo(job_id, image_id, app.config.name, site.id, feedback)
        with MigrationLock(app.redis, app.config.namespace, image_id, site.id, app.config.lock_ttl,
                           app.heartbeat) as lock:
            ctx = _run(app, info, site, steps, meta, retries_left, lock, timeout)
    except Exception as exc:
        if isinstance(exc, MigratioError):
            reason = str(exc)
        elif isinstance(exc, JobTimeoutException):  # before the pipeline started
            reason = str(_timed_out(timeout, "-"))
        else:
            log.exception("job=%s internal error", job_id)
            where = job_log_path(app.config.log_dir, job_id)
            reason = f"internal error: {describe(exc)} (a bug; traceback in {where})"
        decision = decide(exc, retries_left)
        _report_failure(app, info, meta, reason, decision)
        outcome: Outcome = ("rejected" if site is None else "waiting" if decision.state == "waiting"
                            else "retried" if decision.retried else "failed")
        app.metrics.migration_ended(*_dest_labels(app, site, dest), outcome, None)
        raise
    result = dict(ctx.result)
    meta.update(state="finished", result=result, step=None)
    app.status.emit(info, _final_line(ctx))
    app.metrics.migration_ended(site.id, site.type, "already_present" if ctx.already_present else "finished",
                                time.monotonic() - start)
    return result


def count_crashed(app: App, dest: object, retried: bool) -> None:
    """A work-horse died running a migration to `dest`, before it could count how it ended."""
    app.metrics.migration_ended(*_dest_labels(app, None, dest), "retried" if retried else "failed", None)


def _dest_labels(app: App, site: Site | None, dest: object) -> tuple[str, str]:
    """A job's destination as metric labels: a site id and type from its conf; the id alone when
    its conf does not load; else "unknown" (a label never carries unchecked job input)."""
    try:
        site = site or load_site(app.config.sites_dir, str(dest))
    except MigratioError:
        try:
            known = site_path(app.config.sites_dir, str(dest)).is_file()
        except InvalidInput:
            known = False
        return (str(dest) if known else UNKNOWN), UNKNOWN
    return site.id, site.type


def _run(app: App, info: JobInfo, site: Site, steps: list[Step], meta: Meta, retries_left: int,
         lock: MigrationLock, timeout: int) -> Context:
    workdir = job_dir(app.config.work_dir, info.job_id)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(job=info, config=app.config, site=site, services=app.services, workdir=workdir,
                  meta=meta, status=app.status, retries_left=retries_left, metrics=app.metrics)
    try:
        run_pipeline(ctx, steps, guard=lambda step: lock.check(f"step {step}"))
        return ctx
    except JobTimeoutException:  # raised by RQ in the work-horse when job_timeout ran out
        raise _timed_out(timeout, ctx.step) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _timed_out(timeout: int, step: str) -> TimedOut:
    return TimedOut(f"timed out after job_timeout={timeout} s in step {step}; not retried (it would time out "
                    "again): raise job_timeout in config.yml, then `migratio retry`")


def _report_failure(app: App, info: JobInfo, meta: Meta, reason: str, decision: Decision) -> None:
    reason = app.redact(reason)  # job meta and status lines never carry a secret
    meta.update(state=decision.state, error=reason)
    level = logging.ERROR if decision.uses_attempt else logging.INFO  # waiting is no failure
    log.log(level, "job=%s %s: %s", info.job_id, decision.prefix.lower(), reason)
    app.status.emit(info, f"{decision.prefix}: {reason}")


def _final_line(ctx: Context) -> str:
    image = ctx.dest_image_id or "?"
    if ctx.already_present:
        return f"{ALREADY_PRESENT} on {ctx.site.id} as {image}"
    return f"{FINISHED}: image {image} on {ctx.site.id} verified"

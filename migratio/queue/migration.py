"""One migration: validate the job, take the lock, run the destination's pipeline, report."""

import logging
import shutil
from dataclasses import dataclass, field
from typing import Callable

from redis import Redis

from migratio import ids
from migratio.conf.config import Config
from migratio.conf.sites import Site, load_site
from migratio.errors import MigratioError
from migratio.local.workdirs import job_dir
from migratio.pipeline.context import Context
from migratio.pipeline.retry import Decision, decide
from migratio.pipeline.runner import Step, run_pipeline
from migratio.pipeline.services import Services
from migratio.pipeline.status import ALREADY_PRESENT, FINISHED, JobInfo, Meta, StatusSink
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


def run_migration(app: App, job_id: str, image: object, dest: object, meta: Meta,
                  retries_left: int = 0, feedback: bool = False) -> dict[str, object]:
    """Run one migration; raises MigratioError on failure, after reporting it.

    With `feedback`, its status lines go to Atmosphere too (see migratio.feedback).
    """
    info = JobInfo(job_id, str(image), app.config.name, str(dest), feedback)
    try:
        image_id, site = ids.image_id(image), load_site(app.config.sites_dir, str(dest))
        steps = app.steps_for(site)
        info = JobInfo(job_id, image_id, app.config.name, site.id, feedback)
        with MigrationLock(app.redis, app.config.namespace, image_id, site.id, app.config.lock_ttl):
            ctx = _run(app, info, site, steps, meta, retries_left)
    except Exception as exc:
        if isinstance(exc, MigratioError):
            reason = str(exc)
        else:
            log.exception("job=%s internal error", job_id)
            reason = f"internal error ({type(exc).__name__}); see the worker log"
        _report_failure(app, info, meta, reason, decide(exc, retries_left))
        raise
    result = dict(ctx.result)
    meta.update(state="finished", result=result, step=None)
    app.status.emit(info, _final_line(ctx))
    return result


def _run(app: App, info: JobInfo, site: Site, steps: list[Step], meta: Meta, retries_left: int) -> Context:
    workdir = job_dir(app.config.work_dir, info.job_id)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(job=info, config=app.config, site=site, services=app.services, workdir=workdir,
                  meta=meta, status=app.status, retries_left=retries_left)
    try:
        run_pipeline(ctx, steps)
        return ctx
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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

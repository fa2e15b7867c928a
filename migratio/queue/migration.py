"""One migration: validate the job, take the lock, run the destination's pipeline, report."""

import logging
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable

from redis import Redis

from migratio import ids
from migratio.conf.config import Config
from migratio.conf.sites import load_site
from migratio.errors import MigratioError
from migratio.local.workdirs import job_dir
from migratio.pipeline.runner import Context, run_pipeline
from migratio.pipeline.services import Services
from migratio.pipeline.status import ALREADY_PRESENT, FAILED, FINISHED, WAITING, WILL_RETRY, JobInfo, Meta, StatusSink
from migratio.queue.locks import LockBusy, MigrationLock
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
    steps_for: Callable[[Any], list] = field(default=build_steps)  # Site -> steps (tests pass their own)
    redact: Callable[[str], str] = field(default_factory=Redactor)  # for the per-job log file


def run_migration(app: App, job_id: str, image: object, dest: object, meta: Meta,
                  retries_left: int = 0, feedback: bool = False) -> dict[str, Any]:
    """Run one migration; raises MigratioError (with `retryable`) on failure, after reporting it.

    With `feedback`, its status lines go to Atmosphere too (see migratio.feedback).
    """
    info = JobInfo(job_id, str(image), app.config.name, str(dest), feedback)
    try:
        image_id, site = ids.image_id(image), load_site(app.config.sites_dir, str(dest))
        steps = app.steps_for(site)
        info = JobInfo(job_id, image_id, app.config.name, site.id, feedback)
        with MigrationLock(app.redis, app.config.namespace, image_id, site.id, app.config.lock_ttl):
            result = _run(app, info, site, steps, meta, retries_left)
    except LockBusy as exc:
        _report_failure(app, info, meta, str(exc), retrying=retries_left > 0, waiting=True)
        raise
    except MigratioError as exc:
        _report_failure(app, info, meta, str(exc), retrying=exc.retryable and retries_left > 0)
        raise
    except Exception as exc:
        log.exception("job=%s internal error", job_id)
        _report_failure(app, info, meta, f"internal error ({type(exc).__name__}); see the worker log",
                        retrying=retries_left > 0)
        raise
    meta.update(state="finished", result=result, step=None)
    app.status.emit(info, _final_line(result, site.id))
    return result


def _run(app: App, info: JobInfo, site, steps, meta: Meta, retries_left: int) -> dict[str, Any]:
    workdir = job_dir(app.config.work_dir, info.job_id)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(job=info, config=app.config, site=site, services=app.services, workdir=workdir,
                  meta=meta, status=app.status, retries_left=retries_left)
    try:
        return run_pipeline(ctx, steps)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _report_failure(app: App, info: JobInfo, meta: Meta, reason: str, retrying: bool,
                    waiting: bool = False) -> None:
    reason = app.redact(reason)  # job meta and status lines never carry a secret
    state = ("waiting" if waiting else "retrying") if retrying else "failed"
    meta.update(state=state, error=reason)
    prefix = WILL_RETRY if retrying else FAILED
    if waiting and retrying:
        prefix = WAITING
    log.log(logging.INFO if waiting else logging.ERROR, "job=%s %s: %s", info.job_id, prefix.lower(), reason)
    app.status.emit(info, f"{prefix}: {reason}")


def _final_line(result: dict[str, Any], site_id: str) -> str:
    image = result.get("dest_image_id", "?")
    if result.get("already_present"):
        return f"{ALREADY_PRESENT} on {site_id} as {image}"
    return f"{FINISHED}: image {image} on {site_id} verified"

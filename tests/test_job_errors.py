"""A bug in a step and RQ's job timeout, in a real forking RQ worker on a private redis-server.

Neither is a transient fault: retrying a bug runs the same code again, and a job that ran out
of `job_timeout` would run out of it again. Both fail at once, with a status line that says
which it was; a bug's traceback goes to the job's log, never into the status line.
"""

import logging
import time

import pytest
from rq.job import Job

from migratio.pipeline.runner import Step
from migratio.queue.connections import connect
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.worker import build_app, run_worker
from migratio.redact import Redactor
from tests.builders import config_factory, write_site

IMAGE = "3f0c8a4e-6b7d-4e2f-9a1b-5c6d7e8f9a0b"


def count_run(ctx) -> None:
    """Count the step's runs in a file beside work_dir (the job runs in a forked work-horse)."""
    runs = ctx.config.work_dir.parent / "runs"
    runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))


class Buggy(Step):
    """A step with a bug: every run raises KeyError."""

    name = "buggy"

    def run(self, ctx):
        count_run(ctx)
        return {}["dest_image_id"]


class Slow(Step):
    """A step that outlasts any small job_timeout (it counts its starts in a file)."""

    name = "slow"

    def run(self, ctx):
        count_run(ctx)
        time.sleep(120)
        return "never"


@pytest.fixture
def run_job(tmp_path, redis_server, redis_client, caplog):
    caplog.set_level(logging.INFO)  # the job log then has the status lines (the work-horse inherits the level)

    def run(step, **overrides):
        config = config_factory(tmp_path, redis_url=redis_server.url, **overrides)
        write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
        app = build_app(config, connect(config, Redactor()), services=object(), feedback=False)
        app.steps_for = lambda site: [step]
        job = enqueue_migration(migration_queue(config, app.redis), config, IMAGE, "site-b")
        run_worker(app, burst=True, ingest=False)
        runs = tmp_path / "runs"
        log = (config.log_dir / "jobs" / f"{job.id}.log").read_text()
        lines = [ln.split(" status: ", 1)[1] for ln in log.splitlines() if " status: " in ln]  # the status lines
        return Job.fetch(job.id, connection=app.redis), lines, config, int(runs.read_text()) if runs.exists() else 0
    return run


def test_a_bug_fails_the_job_at_once_with_its_reason_and_the_traceback_in_the_job_log(run_job):
    job, lines, config, runs = run_job(Buggy(), retries=3, retry_intervals=[0])
    assert runs == 1, lines  # not retried: the same code would fail the same way
    assert job.get_status() == "failed" and job.retries_left == 0
    log_file = config.log_dir / "jobs" / f"{job.id}.log"
    reason = f"internal error: KeyError: 'dest_image_id' (a bug; traceback in {log_file})"
    assert job.meta["error"] == reason and job.meta["state"] == "failed"
    assert lines[-1] == f"Migration failed: {reason}"
    assert not [ln for ln in lines if "will retry" in ln]
    assert all("Traceback" not in ln and "\n" not in ln for ln in lines)
    log = log_file.read_text()
    assert "Traceback (most recent call last)" in log and 'return {}["dest_image_id"]' in log


def test_a_job_timeout_fails_the_job_at_once_and_says_so(run_job):
    job, lines, config, runs = run_job(Slow(), retries=2, retry_intervals=[0], job_timeout=2)
    assert runs == 1, lines  # it would only time out again
    assert job.get_status() == "failed" and job.retries_left == 0
    reason = ("timed out after job_timeout=2 s in step slow; not retried (it would time out again): "
              "raise job_timeout in config.yml, then `migratio retry`")
    assert job.meta["error"] == reason
    assert lines[-1] == f"Migration failed: {reason}"
    assert not [ln for ln in lines if "will retry" in ln or "internal error" in ln]

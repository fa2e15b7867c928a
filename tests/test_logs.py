"""log/migratio.log, log/jobs/<job>.log and rotation (WatchedFileHandler, the real logrotate)."""

import getpass
import logging
import os
import shutil
import subprocess
import threading
import time

import pytest
from rq.job import Job

from migratio.errors import TransientError
from migratio.logs import job_log, job_log_path, setup_logging
from migratio.pipeline.runner import Step
from migratio.queue.connections import connect
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.worker import build_app, run_worker
from migratio.redact import Redactor
from support.lab.services import REPO
from tests.builders import config_factory, write_site

IMAGE_1 = "11111111-1111-4111-8111-111111111111"
IMAGE_2 = "22222222-2222-4222-8222-222222222222"
SECRET = "hunter2-very-secret"
log = logging.getLogger("migratio.test")


@pytest.fixture
def logging_to(tmp_path):
    """setup_logging as the worker does (files only); the handlers are removed afterwards."""
    redact = Redactor([SECRET])

    def setup(log_dir):
        setup_logging(log_dir, "INFO", redact, stderr=False)
        return redact

    yield setup
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_migratio", False)]:
        root.removeHandler(handler)
        handler.close()


class RunCommands(Step):
    """Runs real commands: one that succeeds (a secret in its argv), one that fails."""

    name = "commands"

    def run(self, ctx):
        ctx.commands.run(["sh", "-c", "echo warming up >&2", "sh", f"--password={SECRET}"])
        ctx.commands.run(["sh", "-c", "echo 'disk on fire' >&2; exit 3"], what="burn")
        return "not reached"


class FailOnce(Step):
    name = "flaky"

    def run(self, ctx):
        marker = ctx.config.work_dir.parent / f"attempted-{ctx.job.image_id}"
        if not marker.exists():
            marker.write_text("1")
            raise TransientError("head node went away")
        ctx.commands.run(["true"])
        ctx.dest_image_id = "img-2"
        return "Flaky step done"


def test_job_log_has_each_command_with_exit_code_and_stderr_tail(tmp_path, redis_server, redis_client, logging_to):
    config = config_factory(tmp_path, redis_url=redis_server.url, retries=1, retry_intervals=[0])
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
    redact = logging_to(config.log_dir)
    app = build_app(config, connect(config, redact), services=object(), redact=redact)
    app.steps_for = lambda site: [RunCommands()] if site.id == "site-b" else [FailOnce()]
    write_site(config.sites_dir, "site-c", "type: openstack\nhost: h\nuser: u\n")
    queue = migration_queue(config, app.redis)
    failing = enqueue_migration(queue, config, IMAGE_1, "site-b")
    retried = enqueue_migration(queue, config, IMAGE_2, "site-c")

    run_worker(app, burst=True)

    assert Job.fetch(failing.id, connection=app.redis).get_status() == "failed"
    text = job_log_path(config.log_dir, failing.id).read_text()
    assert f"job={failing.id} step=commands started" in text
    assert "run: sh -c 'echo warming up >&2' sh --password=***" in text
    assert "exit 0 after " in text
    assert "sh stderr tail:\nwarming up" in text
    assert "run: sh -c 'echo '\"'\"'disk on fire'\"'\"' >&2; exit 3'" in text
    assert "exit 3 after " in text
    assert "burn failed (exit 3); stderr tail:\ndisk on fire" in text
    assert f"job={failing.id} step=commands failed after " in text
    assert "Migration failed: burn failed (exit 3): disk on fire" in text
    assert SECRET not in text
    assert retried.id not in text  # only this job's records

    assert Job.fetch(retried.id, connection=app.redis).get_status() == "finished"
    text = job_log_path(config.log_dir, retried.id).read_text()
    assert text.index("Migration attempt failed, will retry: head node went away") < text.index("run: true")
    assert "exit 0 after" in text and "Migration finished: image img-2 on site-c verified" in text
    assert failing.id not in text

    daemon = (config.log_dir / "migratio.log").read_text()
    assert "disk on fire" in daemon and SECRET not in daemon  # the daemon log has everything too


def test_job_log_keeps_the_job_thread_and_tagged_records_only(tmp_path):
    def other_thread():
        log.warning("unrelated record from another thread")
        log.warning("job=j-1 step=transfer a helper thread of the job")

    with job_log(tmp_path, "j-1", Redactor()) as path:
        log.warning("the job's own thread")
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    log.warning("after the job")
    lines = path.read_text().splitlines()
    assert [ln.split(": ", 1)[1] for ln in lines] == [
        "the job's own thread", "job=j-1 step=transfer a helper thread of the job"]


def test_a_job_id_that_is_not_a_file_name_gets_no_job_log(tmp_path):
    with job_log(tmp_path, "../escape", Redactor()) as path:
        log.warning("still logged elsewhere")
    assert path is None
    assert not (tmp_path / "jobs").exists() or list((tmp_path / "jobs").iterdir()) == []


def test_daemon_and_job_logs_survive_a_rename(tmp_path, logging_to):
    logging_to(tmp_path)
    daemon = tmp_path / "migratio.log"
    with job_log(tmp_path, "j-2", Redactor()) as job_file:
        log.warning("before rotation")
        os.rename(daemon, tmp_path / "migratio.log.1")
        os.rename(job_file, tmp_path / "j-2.log.1")
        log.warning("after rotation")
    assert "before rotation" in (tmp_path / "migratio.log.1").read_text()
    assert "after rotation" not in (tmp_path / "migratio.log.1").read_text()
    assert "after rotation" in daemon.read_text() and "before rotation" not in daemon.read_text()
    assert "after rotation" in job_file.read_text()  # reopened under its own name


def test_logrotate_policy_rotates_and_the_worker_keeps_writing(tmp_path, logging_to):
    if not shutil.which("logrotate"):
        pytest.fail("logrotate not found: install Debian's logrotate package (make deps)")
    config = config_factory(tmp_path)
    user = getpass.getuser()
    subprocess.run([str(REPO / "support/systemd/install.sh"), "--no-systemctl", "--user", user,
                    "--unit-dir", str(tmp_path / "units"), "--logrotate-dir", str(tmp_path / "logrotate.d"),
                    "--config", str(tmp_path / "config.yml")], check=True, capture_output=True, timeout=120)
    logging_to(config.log_dir)
    log.warning("day one")
    jobs = config.log_dir / "jobs"
    jobs.mkdir()
    old, recent = jobs / "old-job.log", jobs / "recent-job.log"
    old.write_text("from last season\n")
    recent.write_text("from yesterday\n")
    ninety_one_days_ago = time.time() - 91 * 86400
    os.utime(old, (ninety_one_days_ago, ninety_one_days_ago))

    state = tmp_path / "logrotate.state"
    for day in ("two", "three"):
        proc = subprocess.run(["logrotate", "--state", str(state), "--force", str(tmp_path / "logrotate.d/migratio")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        log.warning("day %s", day)

    names = sorted(p.name for p in config.log_dir.iterdir() if p.is_file())
    assert names == ["migratio.log", "migratio.log.1", "migratio.log.2.gz"]  # delaycompress, then gzip
    assert "day three" in (config.log_dir / "migratio.log").read_text()
    assert "day two" in (config.log_dir / "migratio.log.1").read_text()
    assert not old.exists() and recent.exists()  # job logs are kept 90 days

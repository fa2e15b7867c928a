"""A real RQ worker (forking, burst mode) consuming real jobs from a private redis-server."""

import hashlib
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from rq.job import Job

from migratio.cli import main
from migratio.errors import TransientError
from migratio.pipeline.runner import Step
from migratio.queue.connections import RedisTooOld, RedisUnavailable, connect, require_redis
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.worker import build_app, run_worker
from migratio.redact import Redactor
from support.lab.services import RedisServer
from tests.builders import config_factory, write_site
from tests.doubles import FileLines

IMAGE = "0f8e2c4a-1b2c-4d5e-8f90-123456789abc"


class CopyAndHash(Step):
    """A real step on local files: copies the 'image' into the job dir and hashes the copy."""

    name = "copy"

    def __init__(self, source, fail_first_with=None):
        self.source, self.fail_first_with = source, fail_first_with

    def run(self, ctx):
        marker = ctx.config.work_dir.parent / "attempted"
        if self.fail_first_with and not marker.exists():
            marker.write_text("1")
            raise self.fail_first_with
        target = ctx.workdir / "copy.img"
        shutil.copyfile(self.source, target)
        ctx.progress(target.stat().st_size, target.stat().st_size)
        ctx.dest_image_id = "copied"
        ctx.details.update(sha256=hashlib.sha256(target.read_bytes()).hexdigest(), workdir=str(ctx.workdir))
        return "Image copied"


@pytest.fixture
def setup(tmp_path, redis_server, redis_client):
    def make(steps=None, **overrides):
        config = config_factory(tmp_path, redis_url=redis_server.url, **overrides)
        write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
        app = build_app(config, connect(config, Redactor()), services=object())
        if steps is not None:
            app.steps_for = lambda site: steps
        return config, app

    source = tmp_path / "image.raw"
    source.write_bytes(b"\x01" * 4096 + b"\x00" * 4096)
    return make, source


def test_worker_runs_a_job_and_records_the_result(setup):
    make, source = setup
    config, app = make([CopyAndHash(source)])
    job = enqueue_migration(migration_queue(config, app.redis), config, IMAGE, "site-b")
    run_worker(app, burst=True)
    job = Job.fetch(job.id, connection=app.redis)
    assert job.get_status() == "finished"
    result = job.return_value()
    assert result["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert job.meta["state"] == "finished"
    assert job.meta["steps_done"] == ["copy"]
    assert job.meta["bytes_done"] == 8192
    assert not (config.work_dir / job.id).exists()  # per-job temp dir removed


def test_permanent_failure_is_recorded_and_not_retried(setup):
    make, _ = setup
    config, app = make(retries=3, retry_intervals=[0])
    job = enqueue_migration(migration_queue(config, app.redis), config, IMAGE, "site-b")
    (config.sites_dir / "site-b.conf").unlink()  # the site disappeared after enqueue
    run_worker(app, burst=True)
    job = Job.fetch(job.id, connection=app.redis)
    assert job.get_status() == "failed"
    assert job.meta["error"] == f"unknown destination site 'site-b': no file {config.sites_dir / 'site-b.conf'}"
    assert job.retries_left == 0


def test_transient_failure_is_retried_then_succeeds(setup):
    make, source = setup
    config, app = make([CopyAndHash(source, TransientError("head node refused the connection"))],
                       retries=2, retry_intervals=[0])
    sink = FileLines(config.work_dir.parent / "lines.txt")
    app.status.sinks += (sink,)
    job = enqueue_migration(migration_queue(config, app.redis), config, IMAGE, "site-b")
    run_worker(app, burst=True)
    job = Job.fetch(job.id, connection=app.redis)
    assert job.get_status() == "finished"
    assert "Migration attempt failed, will retry: head node refused the connection" in sink.lines
    assert sink.lines[-1] == "Migration finished: image copied on site-b verified"


def test_a_second_job_for_the_same_image_and_site_waits_for_the_lock(setup):
    make, source = setup
    config, app = make([CopyAndHash(source)])
    app.redis.set(f"migratio:{config.namespace}:lock:{IMAGE}:site-b", "other-job")
    job = enqueue_migration(migration_queue(config, app.redis), config, IMAGE, "site-b")
    run_worker(app, burst=True)
    job = Job.fetch(job.id, connection=app.redis)
    assert job.get_status() == "failed"  # no retries configured: fails with the transient reason
    assert job.meta["error"] == f"another job is already migrating image {IMAGE} to site site-b; will retry"


def test_redis_unreachable_at_start_is_one_clear_line(tmp_path):
    config = config_factory(tmp_path, redis_url="redis://:s3cret-pass@127.0.0.1:1/0")
    with pytest.raises(RedisUnavailable) as info:
        connect(config, Redactor())
    assert str(info.value).startswith("cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "s3cret" not in str(info.value)


class RedisWithoutBlmove(RedisServer):
    """A real redis-server whose BLMOVE was disabled the way operators do it (rename-command)."""

    def options(self) -> list[str]:
        return [*super().options(), "--rename-command", "BLMOVE", ""]


def test_a_redis_without_blmove_is_refused_with_one_clear_line(tmp_path):
    server = RedisWithoutBlmove(tmp_path / "redis")
    server.start()
    try:
        config = config_factory(tmp_path, redis_url=server.url)
        with pytest.raises(RedisTooOld) as info:
            connect(config, Redactor())
        assert str(info.value) == (
            f"Redis at {server.url} (version {redis_version()}) has no BLMOVE command (renamed or disabled "
            "with rename-command); migratio needs it (Redis >= 6.2)")
        result = CliRunner().invoke(main, ["--config", str(tmp_path / "config.yml"), "worker", "--burst"])
        assert result.exit_code == 78  # a deployment problem: systemd does not restart it
        assert "has no BLMOVE command" in result.output
    finally:
        server.stop()


def test_a_redis_older_than_6_2_is_refused_naming_both_versions():
    class Old:
        def info(self, section):
            return {"redis_version": "6.0.16"}

    with pytest.raises(RedisTooOld, match=r"^Redis at r is version 6\.0\.16; migratio needs Redis >= 6\.2 "):
        require_redis(Old(), "r")


def redis_version() -> str:
    return subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                          check=True).stdout.split("v=")[1].split()[0]

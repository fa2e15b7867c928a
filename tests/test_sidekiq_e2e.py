"""Against the real peer: jobs pushed by Ruby Sidekiq as Atmosphere pushes them are migrated by a
real migratio worker, and a real Sidekiq server performs the status jobs we send back."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rq.job import Job

from migratio.pipeline.runner import Step
from migratio.pipeline.status import JobInfo
from migratio.queue.connections import connect, feedback_client
from migratio.queue.enqueue import migration_queue
from migratio.queue.feedback import FeedbackSink
from migratio.queue.views import dead_letters
from migratio.queue.worker import build_app, run_worker
from migratio.redact import Redactor
from support.lab.services import REPO
from tests.builders import config_factory, write_site
from tests.waiting import wait_for

pytestmark = pytest.mark.sidekiq

IMAGE_A = "6c3a7a9e-5f0e-4b43-9f4b-2f2b8a3a1d11"
IMAGE_B = "0f8e2c4a-1b2c-4d5e-8f90-123456789abc"
CHUNK = 16 * 1024


class CopyImage(Step):
    """A real step on local files: copies images_dir/<uuid> to a 'destination' directory."""

    name = "copy"

    def __init__(self, dest_dir: Path):
        self.dest_dir = dest_dir

    def run(self, ctx):
        source = ctx.config.images_dir / ctx.job.image_id
        target = self.dest_dir / ctx.job.dest_site / ctx.job.image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        total, done = source.stat().st_size, 0
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                done += len(chunk)
                ctx.progress(done, total)
        ctx.dest_image_id = f"copy-{ctx.job.image_id[:8]}"
        return f"Image copied ({total // 1024} KiB)"


@pytest.fixture
def site(tmp_path, redis_server, redis_client):
    """This site (site-a) with two destinations and two 64 KiB source images."""
    config = config_factory(tmp_path, redis_url=redis_server.url, feedback_interval=0)  # every line
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
    write_site(config.sites_dir, "aws-1", "type: aws\nregion: eu-west-1\n")
    config.images_dir.mkdir(parents=True)
    for n, image in enumerate((IMAGE_A, IMAGE_B)):
        (config.images_dir / image).write_bytes(bytes([n + 1]) * 4 * CHUNK)
    return config


def worker_app(config, dest_dir):
    app = build_app(config, connect(config, Redactor()), services=object())  # feedback sink on
    app.steps_for = lambda site: [CopyImage(dest_dir)]
    return app


def expected_lines(image: str, dest: str) -> list[str]:
    return [line + "\n" for line in (
        "Migration started",
        "copy: 25% (16.0 KiB of 64.0 KiB)", "copy: 50% (32.0 KiB of 64.0 KiB)",
        "copy: 75% (48.0 KiB of 64.0 KiB)", "copy: 100% (64.0 KiB of 64.0 KiB)",
        "Image copied (64 KiB)",
        f"Migration finished: image copy-{image[:8]} on {dest} verified")]


def test_jobs_pushed_like_atmosphere_are_migrated_and_reported(site, tmp_path, redis_client,
                                                               sidekiq_server, sidekiq_push):
    (jid_a,) = sidekiq_push("site-a", IMAGE_A, "site-b")
    (jid_b,) = sidekiq_push("site-a", IMAGE_B, "aws-1", technology="aws")
    run_worker(worker_app(site, tmp_path / "dest"), burst=True)

    for jid in (jid_a, jid_b):
        assert Job.fetch(f"sidekiq-{jid}", connection=redis_client).get_status() == "finished"
    assert (tmp_path / "dest" / "site-b" / IMAGE_A).read_bytes() == (site.images_dir / IMAGE_A).read_bytes()
    assert (tmp_path / "dest" / "aws-1" / IMAGE_B).exists()
    for image, dest in ((IMAGE_A, "site-b"), (IMAGE_B, "aws-1")):
        want = expected_lines(image, dest)
        assert sidekiq_server.wait_for_lines(lambda got: len(got) >= len(want), image=image) == want
    received = sidekiq_server.received()
    assert {tuple(r["args"][:3]) for r in received} == {(IMAGE_A, "site-a", "site-b"), (IMAGE_B, "site-a", "aws-1")}
    assert all(r["job"]["class"] == "Atmosphere::UpdateMigrationJobStatusWorker" for r in received)


def test_sidekiq_8_integer_millisecond_jobs_are_migrated_too(site, tmp_path, redis_client,
                                                                   sidekiq_server, sidekiq_push):
    (jid_6,) = sidekiq_push("site-a", IMAGE_A, "site-b")
    jid_8 = "0123456789abcdef01234567"
    redis_client.sadd("atmosphere:queues", "migration_site-a")
    redis_client.lpush("atmosphere:queue:migration_site-a", json.dumps({
        "retry": True, "queue": "migration_site-a", "class": "Migratio::Worker::OpenstackOpenstackMigrator",
        "args": [IMAGE_B, "site-b"], "jid": jid_8, "created_at": 1795652252591, "enqueued_at": 1795652252592}))
    run_worker(worker_app(site, tmp_path / "dest"), burst=True)
    for jid in (jid_6, jid_8):
        assert Job.fetch(f"sidekiq-{jid}", connection=redis_client).get_status() == "finished"
    for image in (IMAGE_A, IMAGE_B):
        lines = sidekiq_server.wait_for_lines(lambda got: any(l.startswith("Migration finished") for l in got),
                                              image=image)
        assert lines == expected_lines(image, "site-b")


CRASHING_INGEST = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from migratio.conf.config import load_config
    from migratio.queue.connections import ingest_client
    from migratio.queue.ingest import Ingest
    from migratio.queue.enqueue import migration_queue

    config = load_config(Path(sys.argv[1]))
    client = ingest_client(config.redis_url, 1)
    ingest = Ingest(client, config, migration_queue(config, client), consumer="doomed", heartbeat_ttl=1)

    def die(*_):  # the payload is taken; the process dies before enqueueing it
        os.kill(os.getpid(), signal.SIGKILL)

    ingest._enqueue = die
    ingest.drain()
""")


def test_a_crash_between_take_and_enqueue_loses_nothing_and_runs_nothing_twice(
        site, tmp_path, redis_client, sidekiq_server, sidekiq_push):
    jid_a, jid_b = sidekiq_push("site-a", IMAGE_A, "site-b", IMAGE_B, "site-b")
    crashed = subprocess.run([sys.executable, "-c", CRASHING_INGEST, str(tmp_path / "config.yml")],
                             cwd=REPO, capture_output=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
    held = "atmosphere:migratio:ingest:site-a:processing:doomed"
    assert [json.loads(p)["jid"] for p in redis_client.lrange(held, 0, -1)] == [jid_a]
    assert redis_client.llen("atmosphere:queue:migration_site-a") == 1  # B is still queued
    assert Job.exists(f"sidekiq-{jid_a}", redis_client) is False

    wait_for(lambda: not redis_client.exists("atmosphere:migratio:ingest:site-a:alive:doomed"),
             "the dead consumer's heartbeat to expire", timeout=30)
    app = worker_app(site, tmp_path / "dest")
    run_worker(app, burst=True)  # recovers A, takes B, runs both
    assert redis_client.exists(held) == 0

    # A copy of A left behind as if a process died after enqueueing it: recovery must not rerun it.
    redis_client.sadd("atmosphere:migratio:ingest:site-a:consumers", "ghost")
    redis_client.lpush("atmosphere:migratio:ingest:site-a:processing:ghost",
                       json.dumps({"retry": True, "queue": "migration_site-a",
                                   "class": "Migratio::Worker::OpenstackOpenstackMigrator",
                                   "args": [IMAGE_A, "site-b"], "jid": jid_a, "created_at": 1795652252.5}))
    run_worker(app, burst=True)

    queue = migration_queue(site, redis_client)
    assert sorted(queue.finished_job_registry.get_job_ids()) == sorted([f"sidekiq-{jid_a}", f"sidekiq-{jid_b}"])
    FeedbackSink(feedback_client(site.redis_url), "atmosphere").emit(JobInfo("-", "end", "-", "-", True), "sentinel")
    sidekiq_server.wait_for_lines(lambda got: "sentinel\n" in got)  # FIFO, one thread: all before it are done
    for image in (IMAGE_A, IMAGE_B):
        assert sidekiq_server.lines(image) == expected_lines(image, "site-b")


def test_migratio_worker_ingests_in_the_background_and_rejects_what_cannot_be_a_migration(
        site, tmp_path, redis_client, sidekiq_server, sidekiq_push):
    write_site(site.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\npipeline: [cleanup]\n")
    log = tmp_path / "worker.out"
    migratio = Path(sys.executable).parent / "migratio"  # the console script of this venv
    with open(log, "wb") as out:
        worker = subprocess.Popen([str(migratio), "--config", str(tmp_path / "config.yml"), "worker"],
                                  cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        consumers = "atmosphere:migratio:ingest:site-a:consumers"
        wait_for(lambda: redis_client.scard(consumers) == 1 or worker.poll() is not None,
                 lambda: f"the ingest to register: {log.read_text()}", timeout=60)
        assert worker.poll() is None, log.read_text()
        (jid,) = sidekiq_push("site-a", IMAGE_A, "site-b")
        sidekiq_push("site-a", IMAGE_B, "nowhere")
        lines = sidekiq_server.wait_for_lines(lambda got: len(got) >= 3, image=IMAGE_A)
        assert lines[:2] == ["Migration started\n", "Cleanup done\n"]
        assert lines[2].startswith("Migration finished")
        assert sidekiq_server.wait_for_lines(lambda got: len(got) >= 1, image=IMAGE_B) == [
            "Migration rejected: unknown destination site 'nowhere'\n"]
        (dead,) = dead_letters(redis_client, "atmosphere")
        assert json.loads(dead["payload"])["args"] == [IMAGE_B, "nowhere"]
        assert dead["reason"].startswith("unknown destination site 'nowhere': no file ")
        wait_for(lambda: Job.exists(f"sidekiq-{jid}", redis_client)
                 and Job.fetch(f"sidekiq-{jid}", connection=redis_client).get_status() == "finished",
                 "the RQ job to finish", timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert code == 0, log.read_text()
    assert redis_client.keys("atmosphere:migratio:ingest:site-a:*") == []
    text = log.read_text()
    assert "taking Sidekiq jobs from atmosphere:queue:migration_site-a" in text
    assert "Traceback" not in text

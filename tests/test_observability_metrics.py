"""The worker's Prometheus metrics, scraped over HTTP from a real `migratio worker` process (the
CLI, RQ's forking worker) while it migrates real images from lab site-a to site-b (Glance, the
head node's sshd, rsync) through a private Redis: what a scrape says during and after a job is
what the job's own record (its meta, its result, the lines Atmosphere got) says."""

import os
import signal
import socket
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq.job import Job

from migratio.conf.config import load_config
from migratio.errors import ConfigError
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.metrics import open_metrics
from support.lab.config import write_migratio_config
from support.lab.services import free_port
from tests.builders import config_factory
from tests.faults_helpers import Worker, wait_for

SITE_B = {"dest": "site-b", "type": "openstack"}
COUNTED = ("_total", "_count", "_sum", "_bucket")  # what may never go down


class Scrape(dict):
    """One scrape of /metrics: (sample name, frozenset of labels) -> value."""

    def __init__(self, text: str):
        super().__init__({(s.name, frozenset(s.labels.items())): s.value
                          for family in text_string_to_metric_families(text) for s in family.samples})
        self.text = text

    def get_value(self, metric: str, /, **labels: str) -> float | None:
        return self.get((metric, frozenset(labels.items())))

    def outcomes(self) -> dict[str, float]:
        return {dict(k)["outcome"]: v for (name, k), v in self.items()
                if name == "migratio_migrations_total" and dict(k)["dest"] == "site-b"}

    def steps(self) -> dict[str, float]:
        return {dict(k)["step"]: v for (name, k), v in self.items()
                if name == "migratio_step_duration_seconds_count" and v}

    def counted(self) -> dict:
        return {key: value for key, value in self.items() if key[0].endswith(COUNTED)}


class Site:
    """site-a's worker with metrics on, migrating to lab site-b."""

    def __init__(self, lab, redis_server, client, directory):
        self.lab, self.redis, self.dir = lab, client, directory
        self.port = free_port()
        self.config_file = write_migratio_config(
            lab, directory, site_b={"bandwidth_limit": 1024},  # KiB/s: a transfer lasts a few seconds
            redis_url=redis_server.url, metrics_port=self.port, retries=1, retry_intervals=[1], feedback_interval=0)
        self.config = load_config(self.config_file)
        self.worker = Worker(self.config_file, directory / "worker.err")
        wait_for(self._scrape_text, "the metrics endpoint", proc=self.worker)

    def scrape(self) -> Scrape:
        return Scrape(self._scrape_text())

    def enqueue(self, image_id: str) -> Job:
        return enqueue_migration(migration_queue(self.config, self.redis), self.config, image_id, "site-b",
                                 feedback=True)

    def ended(self, job: Job) -> str:
        return wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed") and job.get_status(),
                        f"job {job.id} to end", proc=self.worker, timeout=240)

    def transferring(self, job: Job, size: int, fraction: float) -> dict:
        def progressed():
            meta = Job.fetch(job.id, connection=self.redis).meta
            return meta.get("step") == "transfer" and (meta.get("bytes_done") or 0) >= fraction * size and meta
        return wait_for(progressed, f"{fraction:.0%} transferred", proc=self.worker)

    def feedback_lines(self) -> int:
        return self.redis.llen(f"{self.config.namespace}:queue:feedback")

    def _scrape_text(self) -> str | None:
        return self._get(self.port)

    @staticmethod
    def _get(port: int) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                return answer.read().decode()
        except OSError:
            return None


@pytest.fixture
def site(lab, redis_server, redis_client, tmp_path, clean_lab_images):
    s = Site(lab, redis_server, redis_client, tmp_path)
    yield s
    s.worker.stop()
    for path in Path(lab.head_node.staging_dir).iterdir():  # a killed transfer's partial file
        if path.is_file():
            path.unlink()


@pytest.mark.lab
def test_a_migration_is_counted_while_it_runs_and_when_it_ends(site, glance_image):
    img = glance_image(data_mib=8)
    before = site.scrape()
    assert before.outcomes() == dict.fromkeys(
        ("finished", "already_present", "failed", "retried", "waiting", "rejected"), 0)  # there from the start
    assert before.get_value("migratio_bytes_sent_total", **SITE_B) == 0
    assert before.get_value("migratio_worker_info", name="site-a", version="0.1.0") == 1

    job = site.enqueue(img.id)
    meta = site.transferring(job, img.size, 0.3)
    during = site.scrape()
    assert during.get_value("migratio_transfer_rate_bytes", dest="site-b") > 0
    assert 0 < during.get_value("migratio_bytes_sent_total", **SITE_B) <= img.size
    assert during.get_value("migratio_job_start_time_seconds", job_id=job.id) > 0
    assert during.steps() == dict.fromkeys(meta["steps_done"], 1)  # the steps done so far, the transfer not yet
    assert "transfer" not in during.steps() and sum(during.outcomes().values()) == 0
    assert meta["bytes_total"] == img.size

    assert site.ended(job) == "finished"
    job = Job.fetch(job.id, connection=site.redis)
    after = wait_for(lambda: (s := site.scrape()).get_value("migratio_transfer_rate_bytes", dest="site-b") is None
                     and s, "the finished horse's transfer rate to go")
    assert after.outcomes()["finished"] == 1 and sum(after.outcomes().values()) == 1
    assert after.get_value("migratio_migration_duration_seconds_count", **SITE_B) == 1
    assert after.get_value("migratio_migration_duration_seconds_bucket", le="+Inf", **SITE_B) == 1
    assert after.steps() == dict.fromkeys(job.meta["steps_done"], 1)
    assert set(job.meta["steps_done"]) >= {"locate", "dedupe", "transfer", "register", "verify", "cleanup"}
    assert after.get_value("migratio_bytes_sent_total", **SITE_B) == img.size  # the whole payload, once
    assert not [k for k in after if k[0] == "migratio_job_start_time_seconds"]
    sent = after.get_value("migratio_feedback_lines_total", outcome="sent")
    assert sent == site.feedback_lines() > 3  # every status line Atmosphere got, and only those
    assert after.get_value("migratio_feedback_lines_total", outcome="dropped") == 0

    # the same image again: already present, nothing sent
    again = site.enqueue(img.id)
    assert site.ended(again) == "finished"
    assert Job.fetch(again.id, connection=site.redis).return_value()["already_present"] is True
    present = site.scrape()
    assert present.outcomes()["already_present"] == 1 and sum(present.outcomes().values()) == 2
    assert present.get_value("migratio_bytes_sent_total", **SITE_B) == img.size
    assert present.get_value("migratio_migration_duration_seconds_count", **SITE_B) == 2
    assert present.steps()["dedupe"] == 2 and present.steps()["transfer"] == 1

    # an image site-a does not have: the job fails in its first step
    missing = site.enqueue(str(uuid.uuid4()))
    assert site.ended(missing) == "failed"
    failed = site.scrape()
    assert failed.outcomes()["failed"] == 1 and sum(failed.outcomes().values()) == 3
    assert failed.steps()["locate"] == 3
    assert failed.get_value("migratio_migration_duration_seconds_count", **SITE_B) == 2  # successes only
    assert img.image["name"] not in failed.text and img.id not in failed.text  # no image in a label


@pytest.mark.lab
def test_a_killed_work_horse_loses_no_counter(site, glance_image):
    """SIGKILL of the work-horse in the middle of the transfer: what it had counted (steps done,
    bytes sent) is still in the next scrape; the worker counts the attempt as retried, and the
    retry goes on from those counts."""
    img = glance_image(data_mib=8)
    job = site.enqueue(img.id)
    site.transferring(job, img.size, 0.4)
    ssh = wait_for(lambda: site.worker.running("ssh"), "the transfer's ssh", proc=site.worker)
    counted = site.scrape().counted()
    assert counted[("migratio_bytes_sent_total", frozenset(SITE_B.items()))] > 0
    assert {dict(k)["step"] for (name, k) in counted if name == "migratio_step_duration_seconds_count"} >= {
        "locate", "dedupe", "inspect"}

    os.kill(site.worker.parent_of(ssh[0]), signal.SIGKILL)
    after = wait_for(lambda: (s := site.scrape()).outcomes()["retried"] == 1 and s,
                     "the worker to count the killed attempt", proc=site.worker)
    lost = {key: (value, after.get(key)) for key, value in counted.items() if not after.get(key, -1) >= value}
    assert not lost

    assert site.ended(job) == "finished"
    final = site.scrape()
    assert final.outcomes()["finished"] == 1 and final.outcomes()["retried"] == 1
    assert final.steps()["locate"] == 2  # both attempts
    assert not {key for key, value in counted.items() if not final.get(key, -1) >= value}


def test_each_systemd_instance_serves_its_own_port_and_directory(tmp_path, redis_server, redis_client):
    """Instances share config.yml: migratio-worker@N (MIGRATIO_INSTANCE=N) listens on metrics_port + N - 1."""
    port = free_port()
    config = config_factory(tmp_path, redis_url=redis_server.url, metrics_port=port - 2)
    worker = Worker(tmp_path / "config.yml", tmp_path / "worker.err", env={"MIGRATIO_INSTANCE": "3"})
    try:
        text = wait_for(lambda: Site._get(port), f"metrics on port {port}", proc=worker)
        assert Scrape(text).get_value("migratio_worker_info", name="site-a", version="0.1.0") == 1
        assert (config.work_dir / f"metrics@{port}").is_dir()
        assert "process_cpu_seconds_total" in text  # the process collector
    finally:
        worker.stop()


@pytest.mark.parametrize("instance, taken, error", [
    ("two", False, "error: $MIGRATIO_INSTANCE must be a worker number (1, 2, ...) to offset metrics_port, got 'two'"),
    ("1", True, ("error: keys 'metrics_listen', 'metrics_port': cannot serve metrics on 127.0.0.1:{port}: "
                 "Address already in use")),
])
def test_a_worker_that_cannot_serve_its_metrics_says_why_in_one_line(tmp_path, redis_server, redis_client,
                                                                     instance, taken, error):
    port = free_port()
    config_factory(tmp_path, redis_url=redis_server.url, metrics_port=port)
    with socket.socket() as other:
        if taken:
            other.bind(("127.0.0.1", port))
            other.listen()
        worker = Worker(tmp_path / "config.yml", tmp_path / "worker.err", env={"MIGRATIO_INSTANCE": instance})
        try:
            assert worker.wait(timeout=120) != 0
        finally:
            worker.stop()
    assert worker.stderr.strip().splitlines()[-1] == error.format(port=port)


@pytest.mark.parametrize("value, error", [(0, "must be a TCP port (1-65535) or null, got 0"),
                                          (65536, "must be a TCP port (1-65535) or null, got 65536"),
                                          ("9810", "must be an integer, got str '9810'")])
def test_metrics_port_is_checked_when_the_config_loads(tmp_path, value, error):
    with pytest.raises(ConfigError) as info:
        config_factory(tmp_path, metrics_port=value)
    assert str(info.value) == f"{tmp_path / 'config.yml'}: key 'metrics_port' {error}"


def test_metrics_are_off_by_default(tmp_path):
    config = config_factory(tmp_path)
    assert (config.metrics_port, config.metrics_listen) == (None, "127.0.0.1")
    assert open_metrics(config, {}) is None

"""support/prometheus/: the example scrape config and the alert rules, checked by Prometheus' own
tools (Debian's `prometheus` package: promtool and the server) and against a real worker: a real
Prometheus scrapes a real `migratio worker` (with the test-only gate step) and fires the alerts."""

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from migratio.conf.config import load_config
from migratio.queue.enqueue import enqueue_migration, migration_queue
from support.lab.services import REPO, free_port
from tests.builders import config_factory, write_site
from tests.gatestep import WorkerProcess, entered_key, open_key
from tests.waiting import wait_for

SUPPORT = REPO / "support" / "prometheus"
RULES, SCRAPE, RULE_TESTS = SUPPORT / "migratio.rules.yml", SUPPORT / "prometheus.yml", SUPPORT / "migratio.rules.test.yml"
IMAGE_1 = "11111111-1111-4111-8111-111111111111"
IMAGE_2 = "22222222-2222-4222-8222-222222222222"
JOB_TIMEOUT = 30  # MigratioJobRunningLong fires after 15 s; RQ would stop the job at 30 s


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package (make deps)")
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=SUPPORT,
                          check=False)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_alert_rules_load():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout
    assert {r["alert"] for r in rules()} == {"MigratioMigrationFailed", "MigratioDeadLetterGrowing",
                                              "MigratioNoWorker", "MigratioJobRunningLong"}


def test_the_example_scrape_config_is_valid_with_its_rules():
    result = promtool("check", "config", str(SCRAPE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_each_alert_fires_when_it_should_and_not_before():
    """Prometheus' rule engine on series shaped like a worker's (migratio.rules.test.yml)."""
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {r["alert"] for r in rules()}


class Prometheus:
    """A real Prometheus server, configured from the example scrape config: it scrapes `target`
    every second and evaluates migratio.rules.yml every second."""

    def __init__(self, directory: Path, target: str):
        config = yaml.safe_load(SCRAPE.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target], "labels": {"site": "site-a"}}]
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port, self.log = free_port(), directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_for(self._ready, "Prometheus to be ready", timeout=120)

    def get(self, path: str, **query: str) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def firing(self, alert: str) -> list[dict]:
        return [a["labels"] for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == alert and a["state"] == "firing"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False


@pytest.fixture
def watched(tmp_path, redis_server, redis_client):
    """A real worker (with the gate step; site-c's pipeline is [gate]) serving metrics, and a
    real Prometheus scraping it; yields (config, worker, prometheus)."""
    config = config_factory(tmp_path, redis_url=redis_server.url, metrics_port=free_port(), job_timeout=JOB_TIMEOUT,
                            feedback_interval=0)
    write_site(config.sites_dir, "site-c", "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n")
    worker = WorkerProcess(tmp_path / "config.yml", tmp_path / "worker.err")
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{config.metrics_port}")
    try:
        yield load_config(tmp_path / "config.yml"), worker, prometheus
    finally:
        prometheus.stop()
        worker.stop()


@pytest.mark.sidekiq
def test_a_real_prometheus_fires_the_alerts_from_a_real_worker(watched, redis_client, sidekiq_push):
    config, worker, prometheus = watched
    wait_for(lambda: prometheus.query('up{job="migratio",site="site-a"} == 1'), "the worker's first scrape",
             proc=worker, timeout=60)

    # a job that runs for more than job_timeout / 2 (pushed by Atmosphere's Sidekiq client)
    jid = sidekiq_push("site-a", IMAGE_1, "site-c")[0]
    wait_for(lambda: redis_client.llen(entered_key("site-c")), "the job to reach the gate", proc=worker)
    long = wait_for(lambda: prometheus.firing("MigratioJobRunningLong"), "MigratioJobRunningLong",
                    proc=worker, timeout=JOB_TIMEOUT)
    assert [(a["job_id"], a["site"], a["severity"]) for a in long] == [(f"sidekiq-{jid}", "site-a", "warning")]
    queued = enqueue_migration(migration_queue(config, redis_client), config, IMAGE_2, "site-c")  # waits its turn
    waiting = scrape(config.metrics_port)
    assert 'migratio_queue_length{queue="rq:queue:migration_site-a"} 1.0' in waiting
    assert 'migratio_ingest_jobs_total{outcome="enqueued"} 1.0' in waiting
    redis_client.set(open_key("site-c"), "1")
    wait_for(lambda: queued.get_status(refresh=True) == "finished", "the queued job to finish", proc=worker)
    wait_for(lambda: not prometheus.firing("MigratioJobRunningLong"), "the long job's alert to end", proc=worker)

    # Atmosphere sends a job for a site that has no conf: dead-lettered
    sidekiq_push("site-a", IMAGE_2, "nowhere")
    wait_for(lambda: redis_client.llen(f"{config.namespace}:migratio:dead"), "the dead letter", proc=worker)
    dead = wait_for(lambda: prometheus.firing("MigratioDeadLetterGrowing"), "MigratioDeadLetterGrowing", proc=worker)
    assert [(a["job"], a["severity"]) for a in dead] == [("migratio", "warning")]
    text = scrape(config.metrics_port)
    assert 'migratio_ingest_jobs_total{outcome="dead_lettered"} 1.0' in text
    assert "migratio_dead_letter_length 1.0" in text and "migratio_redis_up 1.0" in text

    # a migration that fails: its site's conf went away after it was enqueued
    write_site(config.sites_dir, "site-d", "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n")
    job = enqueue_migration(migration_queue(config, redis_client), config, IMAGE_2, "site-d")
    (config.sites_dir / "site-d.conf").unlink()
    wait_for(lambda: job.get_status(refresh=True) == "failed", "the job to fail", proc=worker)
    failed = wait_for(lambda: prometheus.firing("MigratioMigrationFailed"), "MigratioMigrationFailed", proc=worker)
    assert [(a["dest"], a["outcome"], a["site"]) for a in failed] == [("unknown", "rejected", "site-a")]

    # every metric a rule names is one Prometheus got from the worker
    scraped = set(prometheus.get("/api/v1/label/__name__/values"))
    named = {name for rule in rules() for name in re.findall(r"\b(migratio_\w+|up)\b", rule["expr"])}
    assert {"migratio_migrations_total", "migratio_dead_letter_length", "up", "migratio_job_start_time_seconds",
            "migratio_job_timeout_seconds"} <= named
    assert named <= scraped, named - scraped

    # no worker alive for site-a: the rule's expression (its `for: 2m` is promtool-tested above)
    no_worker = next(r["expr"] for r in rules() if r["alert"] == "MigratioNoWorker")
    assert not prometheus.query(no_worker)
    worker.stop()
    down = wait_for(lambda: prometheus.query(no_worker), "the worker's scrapes to fail", timeout=60)
    assert [r["metric"] for r in down] == [{"site": "site-a"}]


def test_the_exposition_follows_prometheus_naming_conventions(watched, redis_client):
    """`promtool check metrics` lints a real scrape (units, _total suffixes, help texts)."""
    config, worker, _ = watched
    job = enqueue_migration(migration_queue(config, redis_client), config, IMAGE_1, "site-c")
    wait_for(lambda: redis_client.llen(entered_key("site-c")), "the job to reach the gate", proc=worker)
    during = scrape(config.metrics_port)
    redis_client.set(open_key("site-c"), "1")
    wait_for(lambda: job.get_status(refresh=True) == "finished", "the job to finish", proc=worker)
    for text in (during, scrape(config.metrics_port)):
        result = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                                timeout=60, check=False)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert f'migratio_job_start_time_seconds{{job_id="{job.id}"}}' in during
    assert 'migratio_step_duration_seconds_count{dest="site-c",step="gate",type="openstack"} 1.0' in scrape(
        config.metrics_port)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()

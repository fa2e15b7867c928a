"""RQ's rq-dashboard (the `dashboard` extra) on migratio's Redis, beside a real `migratio worker`.

One worker process (tests/gatestep.py: the real CLI and forking RQ worker plus a test-only
"gate" step) runs three jobs: one finishes, one fails with migratio's one-line reason, and one,
pushed by "Atmosphere" on its Sidekiq queue, waits at the gate (a migration in progress). A real
`rq-dashboard` process on its own loopback port reads that Redis; its JSON endpoints and its
pages as headless Chromium renders them (after their JavaScript ran) must show each job, its
step from the job meta and, for the failed one, the reason.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from rq.job import Job

from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.sidekiq import job_payload, push
from support.lab.services import free_port
from tests.builders import config_factory, write_site
from tests.gatestep import MIB, WorkerProcess, entered_key, open_key
from tests.waiting import wait_for

FINISHED_IMAGE = "11111111-2222-4333-8444-555555555555"
FAILED_IMAGE = "22222222-3333-4444-8555-666666666666"
RUNNING_IMAGE = "33333333-4444-4555-8666-777777777777"
OPENSTACK_CLASS = "Migratio::Worker::OpenstackOpenstackMigrator"
GATED = "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage")  # containers' /dev/shm is often 64 MiB


@dataclass
class Scene:
    base: str  # the dashboard's URL
    queue: str
    finished: str  # job ids
    failed: str
    running: str
    reason: str  # the failed job's reason, as migratio words it
    client: redis.Redis
    tmp: Path

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return response.read().decode()

    def json(self, path: str) -> dict:
        return json.loads(self.get(path))

    def job(self, job_id: str) -> dict:
        return self.json(f"/0/data/job/{job_id}.json")

    def listed(self, registry: str) -> list[dict]:
        return self.json(f"/0/data/jobs/{self.queue}/{registry}/8/asc/1.json")["jobs"]


class Dashboard:
    """`rq-dashboard` as an operator runs it (the extra's console script), in its own process group."""

    def __init__(self, redis_url: str, port: int, log: Path):
        self.log = log
        exe = Path(sys.executable).with_name("rq-dashboard")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(exe), "--bind", "127.0.0.1", "--port", str(port), "--redis-url", redis_url,
                 "--disable-delete", "--poll-interval", "500"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)

    @property
    def stderr(self) -> str:  # for wait_for's messages
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def status(client: redis.Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=client).get_status()


@pytest.fixture(scope="module")
def scene(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    config = config_factory(tmp, redis_url=redis_server.url)
    write_site(config.sites_dir, "site-b", GATED)
    write_site(config.sites_dir, "site-d", GATED)
    client.set(open_key("site-d"), 1)  # jobs to site-d pass the gate at once
    queue = migration_queue(config, client)
    finished = enqueue_migration(queue, config, FINISHED_IMAGE, "site-d").id
    failed = enqueue_migration(queue, config, FAILED_IMAGE, "gone").id  # no config/gone.conf
    push(client, config.namespace, job_payload(OPENSTACK_CLASS, [RUNNING_IMAGE, "site-b"], config.queue_name,
                                               retry=True))
    worker = WorkerProcess(tmp / "config.yml", tmp / "worker.err")
    dashboard = None
    try:
        running = wait_for(lambda: client.lrange(entered_key("site-b"), 0, -1), "the Atmosphere job at the gate",
                           timeout=120, proc=worker)[0].decode()
        wait_for(lambda: status(client, finished) == "finished" and status(client, failed) == "failed",
                 "the first two jobs to end", proc=worker)
        port = free_port()
        dashboard = Dashboard(redis_server.url, port, tmp / "dashboard.log")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(base + "/0/data/queues.json"), "rq-dashboard to answer", timeout=60, proc=dashboard)
        reason = f"unknown destination site 'gone': no file {config.sites_dir / 'gone.conf'}"
        yield Scene(base, config.queue_name, finished, failed, running, reason, client, tmp)
    finally:
        client.set(open_key("site-b"), 1)
        if dashboard is not None:
            dashboard.stop()
        worker.stop()
        client.close()


def test_queues_json_counts_our_queues_jobs(scene):
    queues = {q["name"]: q for q in scene.json("/0/data/queues.json")["queues"]}
    ours = queues[scene.queue]
    assert (ours["count"], ours["started_job_registry_count"], ours["failed_job_registry_count"],
            ours["finished_job_registry_count"]) == (0, 1, 1, 1)


def test_workers_json_shows_the_worker_on_the_running_migration(scene):
    workers = scene.json("/0/data/workers.json")["workers"]
    assert [w["queues"] for w in workers] == [[scene.queue]]
    assert workers[0]["state"] == "busy"
    assert workers[0]["current_job"]["job_id"] == scene.running
    assert workers[0]["current_job"]["description"] == f"migrate {RUNNING_IMAGE} to site-b"


def test_running_job_shows_its_description_and_step_from_the_meta(scene):
    assert [(j["id"], j["description"]) for j in scene.listed("started")] == [
        (scene.running, f"migrate {RUNNING_IMAGE} to site-b")]
    job = scene.job(scene.running)
    assert (job["status"], job["origin"]) == ("started", scene.queue)
    meta = json.loads(job["metadata"])
    assert (meta["state"], meta["step"], meta["steps"]) == ("running", "gate", ["gate"])
    assert (meta["bytes_done"], meta["bytes_total"]) == (3 * MIB, 4 * MIB)
    assert (meta["source"], meta["image_id"], meta["dest"]) == ("atmosphere", RUNNING_IMAGE, "site-b")
    assert meta == Job.fetch(scene.running, connection=scene.client).meta  # JSON lost nothing of it


def test_failed_job_shows_migratios_reason(scene):
    [listed] = scene.listed("failed")
    assert (listed["id"], listed["description"]) == (scene.failed, f"migrate {FAILED_IMAGE} to gone")
    assert listed["exc_info"].strip().endswith(scene.reason)
    job = scene.job(scene.failed)
    assert job["status"] == "failed"
    assert job["exc_info"].strip().splitlines()[-1].endswith(f"Error: {scene.reason}")
    meta = json.loads(job["metadata"])
    assert (meta["state"], meta["error"]) == ("failed", scene.reason)
    assert meta == Job.fetch(scene.failed, connection=scene.client).meta


def test_finished_job_shows_its_result(scene):
    [listed] = scene.listed("finished")
    assert (listed["id"], listed["description"]) == (scene.finished, f"migrate {FINISHED_IMAGE} to site-d")
    job = scene.job(scene.finished)
    assert (job["status"], job["result"]) == ("finished", {"dest_image_id": f"gated-{scene.finished}"})
    meta = json.loads(job["metadata"])
    assert (meta["state"], meta["steps_done"], meta["step"]) == ("finished", ["gate"], None)
    assert meta == Job.fetch(scene.finished, connection=scene.client).meta


def rendered(scene: Scene, path: str, name: str) -> str:
    """The page's DOM after its scripts ran (headless Chromium, a fresh profile under tmp)."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (the Makefile's DEB_PACKAGES has it)"
    run = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={scene.tmp / f'chromium-{name}'}",
         "--virtual-time-budget=5000", "--dump-dom", scene.base + path],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_chromium_renders_the_running_job_with_its_step(scene):
    dom = rendered(scene, f"/0/view/job/{scene.running}", "running")
    assert f"migrate {RUNNING_IMAGE} to site-b" in dom  # filled in by the page's script from the JSON
    assert '"step": "gate"' in dom


def test_chromium_renders_the_failed_job_with_its_reason(scene):
    dom = rendered(scene, f"/0/view/job/{scene.failed}", "failed")
    assert f"migrate {FAILED_IMAGE} to gone" in dom
    assert scene.reason in dom


def test_chromium_renders_the_started_jobs_list(scene):
    dom = rendered(scene, f"/0/view/jobs/{scene.queue}/started/8/asc/1", "started")
    assert scene.running in dom
    assert f"migrate {RUNNING_IMAGE} to site-b" in dom

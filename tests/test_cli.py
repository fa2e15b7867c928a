"""The operator CLI (click's CliRunner) against a real redis-server and real workers."""

import json
import subprocess

import pytest
from click.testing import CliRunner
from rq.job import Job

from migratio.cli import main
from migratio.cli.render import job_line
from migratio.queue import views
from support.lab.services import REPO
from tests.builders import config_factory, write_site
from tests.gatestep import WorkerProcess, entered_key, open_key
from tests.waiting import wait_for

IMAGE_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
IMAGE_F = "ffffffff-ffff-4fff-8fff-ffffffffffff"
GATED = "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n"


@pytest.fixture
def cli(tmp_path, redis_server, redis_client):
    config = config_factory(tmp_path, redis_url=redis_server.url, retries=2, retry_intervals=[0])
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["--config", str(tmp_path / "config.yml"), *args])

    return config, run, redis_client


@pytest.fixture
def worker(tmp_path):
    started = []

    def start():
        started.append(WorkerProcess(tmp_path / "config.yml", tmp_path / "worker.err"))
        return started[-1]

    yield start
    for w in started:
        w.stop()


def enqueued_id(result) -> str:
    assert result.exit_code == 0, result.output
    assert result.output.startswith("enqueued job ")
    return result.output.split()[2].rstrip(":")


def test_migrate_enqueues_what_the_worker_consumes(cli):
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED)
    job = Job.fetch(enqueued_id(run("migrate", IMAGE_A.upper(), "site-b")), connection=redis)
    assert job.func_name == "migratio.queue.job.migrate" and job.args == (IMAGE_A, "site-b")
    assert job.origin == "migration_site-a" and job.get_status() == "queued"


def test_migrate_rejects_bad_input_with_one_line(cli):
    config, run, redis = cli
    result = run("migrate", "not-a-uuid", "site-b")
    assert (result.exit_code, result.output) == (1, "error: invalid image id 'not-a-uuid': expected a UUID\n")
    result = run("migrate", IMAGE_A, "nowhere")
    assert result.exit_code == 1
    assert result.output == f"error: unknown destination site 'nowhere': no file {config.sites_dir / 'nowhere.conf'}\n"
    assert redis.keys("rq:job:*") == []


def test_migrate_to_a_limited_site_waits_for_a_slot(cli):
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED + "max_concurrent: 1\n")
    first = enqueued_id(run("migrate", IMAGE_A, "site-b"))
    second = enqueued_id(run("migrate", IMAGE_F, "site-b"))
    assert Job.fetch(first, connection=redis).get_status() == "queued"
    assert Job.fetch(second, connection=redis).get_status() == "rate_limited"
    result = run("status")
    assert f"{second}  rate_limited" in result.output
    assert "waiting: max_concurrent jobs to this site are already running" in result.output


def test_status_shows_progress_and_failure_then_retry_runs_the_job(cli, worker):
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED)
    gone = write_site(config.sites_dir, "site-x", GATED)
    failed_id = enqueued_id(run("migrate", IMAGE_F, "site-x"))
    gone.unlink()  # the site conf disappears: the job fails permanently
    w = worker()
    wait_for(lambda: Job.fetch(failed_id, connection=redis).get_status() == "failed", "the failure", proc=w)
    running_id = enqueued_id(run("migrate", IMAGE_A, "site-b"))
    wait_for(lambda: redis.lrange(entered_key("site-b"), 0, -1), "the job at the gate", proc=w)

    result = run("status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    running = next(ln for ln in lines if ln.startswith(running_id))
    assert f"started      {IMAGE_A} -> site-b  step=gate 75% 3.0 MiB/4.0 MiB 1.0 MiB/s ETA 0:00:01 running " in running
    failed = lines.index(next(ln for ln in lines if ln.startswith(failed_id)))
    assert lines[failed] == (f"{failed_id}  failed       {IMAGE_F} -> site-x  reason: unknown destination site "
                             f"'site-x': no file {config.sites_dir / 'site-x.conf'}")
    assert lines[failed + 1] == f"    retry: migratio retry {failed_id}"
    assert lines[failed + 2] == f"    log: {config.log_dir / 'jobs' / (failed_id + '.log')}"
    assert "unknown destination site 'site-x'" in (config.log_dir / "jobs" / f"{failed_id}.log").read_text()

    data = {d["id"]: d for d in json.loads(run("status", "--json").output)}
    assert data[running_id]["state"] == "started" and data[running_id]["step"] == "gate"
    assert (data[running_id]["percent"], data[running_id]["eta"]) == (75, 1.0)
    assert data[failed_id]["error"].startswith("unknown destination site 'site-x'")
    assert data[failed_id]["log"] == str(config.log_dir / "jobs" / f"{failed_id}.log")

    one = run("status", failed_id)
    assert one.output.startswith(f"{failed_id}  failed")

    write_site(config.sites_dir, "site-x", GATED)  # the operator fixes the site
    result = run("retry", failed_id)
    assert result.output == f"requeued job {failed_id}: migrate {IMAGE_F} to site-x\n"
    job = Job.fetch(failed_id, connection=redis)
    assert job.get_status() == "queued" and job.meta["error"] is None and job.retries_left == 2

    redis.set(open_key("site-b"), 1)
    redis.set(open_key("site-x"), 1)
    wait_for(lambda: all(Job.fetch(i, connection=redis).get_status() == "finished" for i in (running_id, failed_id)),
             "both jobs finished", proc=w)
    assert f"result: gated-{failed_id}" in run("status", failed_id).output


def test_retry_refuses_what_is_not_a_failed_job(cli):
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED)
    job_id = enqueued_id(run("migrate", IMAGE_A, "site-b"))
    result = run("retry", job_id)
    assert (result.exit_code, result.output) == (1, f"error: job {job_id} is queued, not failed: "
                                                    f"only failed jobs can be retried\n")
    result = run("retry", "no-such-job")
    assert result.exit_code == 1 and result.output.startswith("error: no job 'no-such-job'")


def test_status_watch_refreshes(cli):
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED)
    job_id = enqueued_id(run("migrate", IMAGE_A, "site-b"))
    result = run("status", "--watch", "--interval", "0", "--rounds", "3")
    assert result.exit_code == 0
    blocks = result.output.split("\n\n")
    assert len(blocks) == 3 and all(b.startswith(f"{job_id}  queued") for b in blocks)


def test_status_with_no_jobs_and_unknown_job(cli):
    config, run, redis = cli
    assert run("status").output == "no jobs on migration_site-a\n"
    result = run("status", "0000")
    assert result.exit_code == 1 and result.output.startswith("error: no job '0000'")


def test_progress_in_the_job_line():  # on a terminal: rich's bar, see tests/test_observability_terminal.py
    view = views.JobView("j1", "started", IMAGE_A, "site-b", step="transfer", bytes_done=512, bytes_total=1024,
                        rate=256.0)
    assert job_line(view) == (f"j1  started      {IMAGE_A} -> site-b  "
                              f"step=transfer 50% 512 B/1.0 KiB 256 B/s ETA 0:00:02")


def test_sites_lists_each_conf_and_fails_on_a_broken_one(cli):
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED)
    write_site(config.sites_dir, "broken", "type: ftp\n")
    result = run("sites")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"broken: ERROR {config.sites_dir / 'broken.conf'}: key 'type' must be one of openstack, aws, got 'ftp'",
        "site-b: ok (openstack)"]


def test_rq_info_sees_our_queue(cli, redis_server):
    """RQ's own tooling works on our queues: they are plain RQ queues named migration_<site>."""
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED)
    for image in (IMAGE_A, IMAGE_F):
        enqueued_id(run("migrate", image, "site-b"))
    proc = subprocess.run([str(REPO / ".venv/bin/rq"), "info", "-u", redis_server.url, "--only-queues"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "migration_site-a |" in proc.stdout and "| 2, 0 executing, 0 finished, 0 failed" in proc.stdout.replace("██", "|")


def test_migrate_wait_follows_the_job_to_its_end(cli, worker):
    config, run, redis = cli
    write_site(config.sites_dir, "site-b", GATED)
    redis.set(open_key("site-b"), 1)
    worker()
    result = run("migrate", "--wait", IMAGE_A, "site-b")
    assert result.exit_code == 0, result.output
    job_id = result.output.split()[2].rstrip(":")
    assert result.output.splitlines()[-1] == f"{job_id}  finished     {IMAGE_A} -> site-b  result: gated-{job_id}"

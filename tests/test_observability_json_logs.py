"""`log_format: json`: one JSON object per line on stderr, in log/migratio.log and in the per-job
logs of a real `migratio worker` process, with the job's fields as keys and secrets redacted."""

import json
import logging

import pytest
from rq.job import Job

from migratio.logs import job_log, setup_logging
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.redact import Redactor
from tests.builders import config_factory, write_site
from tests.gatestep import WorkerProcess, open_key

IMAGE_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
IMAGE_F = "ffffffff-ffff-4fff-8fff-ffffffffffff"
GATED = "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n"
SECRET = "hunter2-very-secret"  # a valid site id too: a job sent to it names it in its reason
KEYS = {"time", "level", "logger", "message", "job_id", "image_id", "dest", "step"}
log = logging.getLogger("migratio.test")


def records(text: str) -> list[dict]:
    """Every line is one JSON object with at least the documented keys."""
    lines = text.splitlines()
    assert lines, "no log lines"
    parsed = [json.loads(line) for line in lines]
    for record in parsed:
        assert KEYS <= record.keys() <= KEYS | {"exception"}, record
    return parsed


def one(parsed: list[dict], text: str) -> dict:
    found = [r for r in parsed if text in r["message"]]
    assert len(found) == 1, f"{len(found)} records with {text!r}"
    return found[0]


@pytest.fixture
def logging_to():
    """setup_logging as the worker does (files only); the handlers are removed afterwards."""
    yield lambda log_dir, redact: setup_logging(log_dir, "INFO", redact, stderr=False, fmt="json")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_migratio", False)]:
        root.removeHandler(handler)
        handler.close()


def test_a_worker_writes_json_lines_with_the_job_fields_everywhere(tmp_path, redis_server, redis_client,
                                                                   monkeypatch):
    config = config_factory(tmp_path, redis_url=redis_server.url, log_format="json")
    write_site(config.sites_dir, "site-b", GATED)
    redis_client.set(open_key("site-b"), 1)
    queue = migration_queue(config, redis_client)
    done = enqueue_migration(queue, config, IMAGE_A, "site-b")
    failed = enqueue_migration(queue, config, IMAGE_F, SECRET)  # no such site conf: it fails
    monkeypatch.setenv("OS_PASSWORD", SECRET)  # the worker redacts it wherever it appears
    worker = WorkerProcess(tmp_path / "config.yml", tmp_path / "worker.err", "--burst")
    try:
        assert worker.wait(timeout=120) == 0, worker.stderr
    finally:
        worker.stop()
    assert Job.fetch(done.id, connection=redis_client).get_status() == "finished"
    assert Job.fetch(failed.id, connection=redis_client).get_status() == "failed"

    stderr, daemon = worker.stderr, (config.log_dir / "migratio.log").read_text()
    job_file = (config.log_dir / "jobs" / f"{done.id}.log").read_text()
    failed_file = (config.log_dir / "jobs" / f"{failed.id}.log").read_text()
    for text in (stderr, daemon, job_file, failed_file):
        assert SECRET not in text

    stderr_records, daemon_records = records(stderr), records(daemon)
    assert {r["logger"] for r in daemon_records} >= {"migratio.worker", "migratio.pipeline", "rq.worker"}
    for parsed in (stderr_records, daemon_records, records(job_file)):
        waiting = one(parsed, "waiting at the gate")  # logged by the step, through ctx.log
        assert waiting["message"] == f"job={done.id} step=gate waiting at the gate"  # as in the text log
        assert (waiting["level"], waiting["logger"]) == ("INFO", "migratio.pipeline")
        assert (waiting["job_id"], waiting["image_id"], waiting["dest"], waiting["step"]) == (
            done.id, IMAGE_A, "site-b", "gate")
        passed = one(parsed, "status: Gate passed")  # the status line of the step: another logger
        assert (passed["logger"], passed["job_id"], passed["image_id"], passed["dest"], passed["step"]) == (
            "migratio.pipeline.status", done.id, IMAGE_A, "site-b", "gate")
        assert waiting["time"] <= passed["time"] and passed["time"].endswith("+00:00")

    job_records = records(job_file)
    assert {r["job_id"] for r in job_records} == {done.id}  # only this job, every record tagged
    assert {r["step"] for r in job_records} >= {"gate"}
    assert one(job_records, "Migration finished")["image_id"] == IMAGE_A

    reason = one(records(failed_file), "status: Migration failed")  # no step ran: the fields from the job's start
    assert reason["message"].endswith(": Migration failed: unknown destination site '***': no file "
                                      f"{config.sites_dir / '***.conf'}")
    assert (reason["job_id"], reason["image_id"], reason["dest"], reason["step"]) == (failed.id, IMAGE_F, "***", None)

    outside = [r for r in daemon_records if r["job_id"] is None]  # the worker's own records carry no job
    assert outside and all(r["image_id"] is None and r["step"] is None for r in outside)


def test_json_log_redacts_messages_tracebacks_and_fields(tmp_path, logging_to):
    redact = Redactor([SECRET])
    logging_to(tmp_path, redact)
    with job_log(tmp_path, "j-1", redact, "json", IMAGE_A, "site-b") as path:
        log.warning("connecting with password=%s and token %s", "letmein", SECRET)
        try:
            raise RuntimeError(f"auth refused for {SECRET}")
        except RuntimeError:
            log.exception("login failed")
        log.info("a record from a step", extra={"step": f"step-{SECRET}"})
    log.info("after the job")

    for text in (path.read_text(), (tmp_path / "migratio.log").read_text()):
        assert SECRET not in text and "letmein" not in text
        parsed = records(text)
        assert one(parsed, "connecting")["message"] == "connecting with password=*** and token ***"
        failure = one(parsed, "login failed")
        assert failure["level"] == "ERROR" and failure["exception"].endswith("RuntimeError: auth refused for ***")
        assert one(parsed, "a record from a step")["step"] == "step-***"
        assert {(r["job_id"], r["image_id"], r["dest"]) for r in parsed if "after" not in r["message"]} == {
            ("j-1", IMAGE_A, "site-b")}
    after = one(records((tmp_path / "migratio.log").read_text()), "after the job")
    assert (after["job_id"], after["image_id"], after["dest"], after["step"]) == (None, None, None, None)

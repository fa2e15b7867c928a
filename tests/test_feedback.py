"""The feedback sink: status lines pushed as Sidekiq jobs for Atmosphere's status worker."""

import json
import logging
import re

import pytest
import redis

from migratio.feedback import MAX_LINE, FeedbackSink, feedback_client
from migratio.redact import Redactor
from migratio.status import FanOut, JobInfo
from labservices import RedisServer, free_port

IMAGE = "6c3a7a9e-5f0e-4b43-9f4b-2f2b8a3a1d11"
JOB = JobInfo("job-1", IMAGE, "site-a", "site-b")


def queued(client, namespace="atmosphere"):
    """Feedback jobs in the order a Sidekiq server takes them (from the right)."""
    return [json.loads(raw) for raw in reversed(client.lrange(f"{namespace}:queue:feedback", 0, -1))]


def test_pushes_a_job_for_atmospheres_status_worker(redis_server, redis_client):
    sink = FeedbackSink(feedback_client(redis_server.url), "atmosphere")
    sink.emit(JOB, "Migration started")
    (job,) = queued(redis_client)
    assert job["class"] == "Atmosphere::UpdateMigrationJobStatusWorker"
    assert job["queue"] == "feedback" and job["retry"] is False
    assert job["args"] == [IMAGE, "site-a", "site-b", "Migration started"]
    assert re.fullmatch(r"[0-9a-f]{24}", job["jid"])
    assert isinstance(job["created_at"], float) and job["enqueued_at"] >= job["created_at"]
    assert redis_client.smembers("atmosphere:queues") == {b"feedback"}


def test_lines_are_one_short_redacted_line(redis_server, redis_client):
    sink = FeedbackSink(feedback_client(redis_server.url), "atmosphere", Redactor(["hunter2-secret"]))
    sink.emit(JOB, "Migration failed: ssh said\n  password=hunter2-secret\tand more")
    sink.emit(JOB, "x" * 1000)
    first, second = (j["args"][3] for j in queued(redis_client))
    assert first == "Migration failed: ssh said password=*** and more"
    assert len(second) == MAX_LINE and second.endswith("...")


def test_millisecond_timestamps_for_newer_sidekiq(redis_server, redis_client):
    FeedbackSink(feedback_client(redis_server.url), "atmosphere", timestamps="milliseconds").emit(JOB, "x")
    (job,) = queued(redis_client)
    assert isinstance(job["created_at"], int) and job["created_at"] > 10**12


def test_lines_wait_while_redis_is_away_and_go_out_in_order(tmp_path, caplog):
    server = RedisServer(tmp_path)  # a private server: this test stops it
    server.start()
    sink = FeedbackSink(feedback_client(server.url), "atmosphere", max_backoff=1.0)
    try:
        sink.emit(JOB, "Migration started")
        server.stop()
        with caplog.at_level(logging.WARNING, logger="migratio.feedback"):
            FanOut(sink).emit(JOB, "locate: done")  # never raises into the migration
            sink.emit(JOB, "transfer: done")
        assert sink.pending == 2
        assert "buffering them and retrying" in caplog.text
        server.start()  # same port, empty
        assert sink.flush(timeout=60)
        client = redis.Redis.from_url(server.url)
        assert [j["args"][3] for j in queued(client)] == ["locate: done", "transfer: done"]
        client.close()
    finally:
        server.stop()


def test_flush_gives_up_after_the_timeout_and_says_what_is_left(caplog):
    sink = FeedbackSink(feedback_client(f"redis://127.0.0.1:{free_port()}/0"), "atmosphere", max_backoff=0.1)
    sink.emit(JOB, "Migration finished")
    with caplog.at_level(logging.WARNING, logger="migratio.feedback"):
        assert sink.flush(timeout=0.3) is False
    assert "1 status line(s) for Atmosphere not delivered" in caplog.text
    assert "last: Migration finished" in caplog.text


def test_buffer_is_bounded_and_drops_the_oldest_with_a_warning(caplog):
    sink = FeedbackSink(feedback_client(f"redis://127.0.0.1:{free_port()}/0"), "atmosphere", max_buffer=3)
    with caplog.at_level(logging.WARNING, logger="migratio.feedback"):
        for n in range(5):
            sink.emit(JOB, f"line {n}")
    assert sink.pending == 3
    assert [p["args"][3] for p in sink._buffer] == ["line 2", "line 3", "line 4"]
    assert "buffer full (3 lines), dropping the oldest: line 0" in caplog.text


@pytest.mark.sidekiq
def test_a_real_sidekiq_server_performs_the_status_jobs_in_order(redis_server, sidekiq_server):
    sink = FeedbackSink(feedback_client(redis_server.url), "atmosphere")
    lines = ["Migration started", "Image located", "transfer: 50% (1.0 MiB of 2.0 MiB)",
             "Migration finished: image 1234 on site-b verified"]
    for line in lines:
        sink.emit(JOB, line)
    assert sidekiq_server.wait_for_lines(lambda got: len(got) >= 4) == lines
    received = sidekiq_server.received()
    assert all(r["args"][:3] == [IMAGE, "site-a", "site-b"] for r in received)
    assert all(r["job"]["retry"] is False and r["job"]["queue"] == "feedback" for r in received)

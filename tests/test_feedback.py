"""The feedback sink: status lines pushed as Sidekiq jobs for Atmosphere's status worker."""

import json
import logging
import re
import time

import pytest
import redis

from migratio.pipeline.status import FanOut, JobInfo
from migratio.queue.connections import feedback_client
from migratio.queue.feedback import MAX_LINE, FeedbackRelay, FeedbackSink
from migratio.redact import Redactor
from support.lab.services import RedisServer, free_port

IMAGE = "6c3a7a9e-5f0e-4b43-9f4b-2f2b8a3a1d11"
JOB = JobInfo("job-1", IMAGE, "site-a", "site-b", feedback=True)


def queued(client, namespace="atmosphere"):
    """Feedback jobs in the order a Sidekiq server takes them (from the right)."""
    return [json.loads(raw) for raw in reversed(client.lrange(f"{namespace}:queue:feedback", 0, -1))]


def texts(client) -> list[str]:
    """The status texts queued for Atmosphere, each checked to be one line ending in a newline."""
    lines = [j["args"][3] for j in queued(client)]
    assert all(ln.endswith("\n") and "\n" not in ln[:-1] for ln in lines), lines
    return [ln[:-1] for ln in lines]


def unpaced(url: str, *args, **options) -> FeedbackSink:
    return FeedbackSink(feedback_client(url), "atmosphere", *args, interval=0, **options)


def test_pushes_a_job_for_atmospheres_status_worker(redis_server, redis_client):
    sink = FeedbackSink(feedback_client(redis_server.url), "atmosphere")
    sink.emit(JOB, "Migration started")
    (job,) = queued(redis_client)
    assert job["class"] == "Atmosphere::UpdateMigrationJobStatusWorker"
    assert job["queue"] == "feedback" and job["retry"] is False
    assert job["args"] == [IMAGE, "site-a", "site-b", "Migration started\n"]
    assert re.fullmatch(r"[0-9a-f]{24}", job["jid"])
    assert isinstance(job["created_at"], float) and job["enqueued_at"] >= job["created_at"]
    assert redis_client.smembers("atmosphere:queues") == {b"feedback"}


def test_lines_are_one_short_redacted_line(redis_server, redis_client):
    sink = unpaced(redis_server.url, Redactor(["hunter2-secret"]))
    sink.emit(JOB, "Migration failed: ssh said\n  password=hunter2-secret\tand more")
    sink.emit(JOB, "x" * 1000)
    first, second = texts(redis_client)
    assert first == "Migration failed: ssh said password=*** and more"
    assert len(second) == MAX_LINE and second.endswith("...")


def test_millisecond_timestamps_for_newer_sidekiq(redis_server, redis_client):
    FeedbackSink(feedback_client(redis_server.url), "atmosphere", timestamps="milliseconds").emit(JOB, "x")
    (job,) = queued(redis_client)
    assert isinstance(job["created_at"], int) and job["created_at"] > 10**12


def test_lines_wait_while_redis_is_away_and_go_out_in_order(tmp_path, caplog):
    server = RedisServer(tmp_path)  # a private server: this test stops it
    server.start()
    sink = unpaced(server.url, max_backoff=1.0)
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
        assert texts(client) == ["locate: done", "transfer: done"]
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
    assert [p.text for p in sink._buffer] == ["line 2\n", "line 3\n", "line 4\n"]
    assert "buffer full (3 lines), dropping the oldest: line 0" in caplog.text


@pytest.mark.sidekiq
def test_a_real_sidekiq_server_performs_the_status_jobs_in_order(redis_server, sidekiq_server):
    sink = unpaced(redis_server.url)
    lines = ["Migration started", "Image located", "transfer: 50% (1.0 MiB of 2.0 MiB)",
             "Migration finished: image 1234 on site-b verified"]
    for line in lines:
        sink.emit(JOB, line)
    assert sidekiq_server.wait_for_lines(lambda got: len(got) >= 4) == [ln + "\n" for ln in lines]
    received = sidekiq_server.received()
    assert all(r["args"][:3] == [IMAGE, "site-a", "site-b"] for r in received)
    assert all(r["job"]["retry"] is False and r["job"]["queue"] == "feedback" for r in received)


# -- pacing: Atmosphere's read-append-write must never see two lines of a migration at once


def paced(url: str, interval: float) -> tuple[FeedbackSink, FeedbackRelay]:
    client = feedback_client(url)
    return FeedbackSink(client, "atmosphere", interval=interval), FeedbackRelay(client, "atmosphere", interval)


def pushed_at(client) -> list[tuple[str, float]]:
    return [(j["args"][3].rstrip("\n"), j["enqueued_at"]) for j in queued(client)]


def test_lines_of_one_migration_are_spaced_and_superseded_progress_is_dropped(redis_server, redis_client):
    sink, relay = paced(redis_server.url, 0.4)
    for text in ("Migration started", "locate: done", "transfer: 50% (1 of 2)", "transfer: 100% (2 of 2)"):
        sink.emit(JOB, text)
    assert texts(redis_client) == ["Migration started"]  # the rest waits for the interval
    assert relay.waiting() == 1
    relay.deliver_due()
    assert texts(redis_client) == ["Migration started"]  # too early still
    time.sleep(0.45)
    assert relay.deliver_due() == 1
    sink.emit(JOB, "Migration finished: image 1234 on site-b verified")
    time.sleep(0.45)
    relay.deliver_due()
    (first, t1), (second, t2), (third, t3) = pushed_at(redis_client)
    assert [first, second, third] == ["Migration started", "transfer: 100% (2 of 2)",
                                      "Migration finished: image 1234 on site-b verified"]
    assert t2 - t1 >= 0.4 and t3 - t2 >= 0.4
    assert relay.waiting() == 0


def test_a_final_line_is_never_dropped_and_stays_last_of_its_attempt(redis_server, redis_client):
    sink, relay = paced(redis_server.url, 0.2)
    sink.emit(JOB, "Migration started")
    sink.emit(JOB, "transfer: 10% (1 of 10)")
    sink.emit(JOB, "Migration attempt failed, will retry: ssh: connection refused")
    sink.emit(JOB, "Migration started")  # the next attempt, before the final line went out
    sink.emit(JOB, "transfer: 20% (2 of 10)")
    sink.emit(JOB, "Migration finished: image 1234 on site-b verified")
    deadline = time.monotonic() + 10
    while relay.waiting() and time.monotonic() < deadline:
        relay.deliver_due()
        time.sleep(0.05)
    # the second attempt's progress lines were superseded while they waited: only its outcome goes out
    assert texts(redis_client) == ["Migration started", "Migration attempt failed, will retry: ssh: connection refused",
                                   "Migration finished: image 1234 on site-b verified"]


def test_migrations_are_paced_apart_not_together(redis_server, redis_client):
    sink, _ = paced(redis_server.url, 5)
    other = JobInfo("job-2", "0a3a7a9e-5f0e-4b43-9f4b-2f2b8a3a1d11", "site-a", "site-b", feedback=True)
    sink.emit(JOB, "Migration started")
    sink.emit(other, "Migration started")
    sink.emit(JobInfo("job-3", IMAGE, "site-a", "site-c", feedback=True), "Migration started")
    assert len(texts(redis_client)) == 3


def test_lines_wait_in_redis_for_any_worker_to_send_them(redis_server, redis_client):
    """A work-horse's lines outlive it: another process's relay sends them (nothing lost on exit)."""
    sink, _ = paced(redis_server.url, 0.2)
    sink.emit(JOB, "Migration started")
    sink.emit(JOB, "Image already present on site-b as 1234")
    del sink  # the work-horse is gone
    relay = FeedbackRelay(feedback_client(redis_server.url), "atmosphere", 0.2)
    relay.stop(timeout=5)  # a stopping worker sends what waits, keeping the interval
    assert texts(redis_client) == ["Migration started", "Image already present on site-b as 1234"]


def test_jobs_not_from_atmosphere_send_nothing(redis_server, redis_client):
    sink = FeedbackSink(feedback_client(redis_server.url), "atmosphere")
    sink.emit(JobInfo("cli-job", IMAGE, "site-a", "site-b"), "Migration started")
    assert queued(redis_client) == []

"""Hostile Sidekiq payloads on a real Redis: whatever one holds, the jobs behind it still run.

A payload that the ingest cannot handle for a reason it did not foresee (an exception that is
not a BadPayload) is tried a bounded number of times, counted per payload in Redis, and then
dead-lettered with its reason; meanwhile it waits at the back of the queue, not at its head.
"""

import json
import logging
import threading

import pytest
from rq.job import Job

from migratio import ids
from migratio.errors import InvalidInput
from migratio.queue.connections import connect, ingest_client
from migratio.queue.enqueue import migration_queue
from migratio.queue.ingest import Ingest
from migratio.queue.views import dead_letters
from migratio.queue.worker import build_app, run_worker
from migratio.redact import Redactor
from tests.builders import config_factory, write_site
from tests.waiting import wait_for

IMAGE = "8d2f4b1c-3a5e-4c7d-9e0f-1a2b3c4d5e6f"
SOURCE = "atmosphere:queue:migration_site-a"
ATTEMPTS = "atmosphere:migratio:ingest:site-a:attempts"
DEEP = "type: openstack\nhost: " + "[" * 20000 + "]" * 20000 + "\nuser: u\n"  # YAML nested past Python's stack


def payload(n: int, dest: str = "site-b", image: str = IMAGE) -> str:
    data = {"retry": True, "queue": "migration_site-a", "class": "Migratio::Worker::OpenstackOpenstackMigrator",
            "args": [image, dest], "jid": f"{n:024x}", "created_at": 1795652252.5, "enqueued_at": 1795652252.6}
    return json.dumps(data, separators=(",", ":"))


def push(client, *raws: str) -> None:
    for raw in raws:
        client.sadd("atmosphere:queues", "migration_site-a")
        client.lpush(SOURCE, raw)


def job_id(n: int) -> str:
    return f"sidekiq-{n:024x}"


class Recorder:
    def __init__(self):
        self.lines = []

    def emit(self, job, text):
        self.lines.append((job.job_id, job.dest_site, text))


@pytest.fixture
def config(tmp_path, redis_server, redis_client):
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
    return config


def make_ingest(config, feedback=None, **options) -> Ingest:
    client = ingest_client(config.redis_url, 0.2)
    return Ingest(client, config, migration_queue(config, client), feedback, block=0.2, **options)


def test_a_site_id_longer_than_64_characters_is_refused():
    assert ids.site_id("s" * 64) == "s" * 64
    with pytest.raises(InvalidInput, match=r"^invalid site id 's{65}': at most 64 characters$"):
        ids.site_id("s" * 65)
    with pytest.raises(InvalidInput, match=r"^invalid site id 's{20,}\.\.\.: at most 64 characters$"):
        ids.site_id("s" * 300)  # shown shortened


def test_a_destination_id_the_file_system_refuses_is_a_dead_letter_and_the_next_job_runs(config, redis_client):
    """300 characters: longer than a file name may be (ENAMETOOLONG when its conf is looked up)."""
    long_dest = "d" * 300
    push(redis_client, payload(1, dest=long_dest), payload(2))
    feedback = Recorder()
    assert make_ingest(config, feedback).drain() == {"dead": 1, "enqueued": 1}
    [entry] = dead_letters(redis_client, "atmosphere")
    assert entry["payload"] == payload(1, dest=long_dest)
    assert "invalid site id" in entry["reason"] and "at most 64 characters" in entry["reason"]
    assert Job.exists(job_id(2), redis_client)
    assert redis_client.keys("atmosphere:migratio:ingest:*") == []  # no attempts left counted


def test_a_site_conf_that_is_not_utf8_fails_its_job_in_the_worker_and_the_next_job_runs(config, redis_client):
    path = write_site(config.sites_dir, "latin1", "")
    path.write_bytes(b"type: openstack\nhost: h\xf6st\nuser: u\n")
    push(redis_client, payload(3, dest="latin1"), payload(4))
    assert make_ingest(config).drain() == {"enqueued": 2}

    app = build_app(config, connect(config, Redactor()), services=object(), feedback=False)
    app.steps_for = lambda site: []
    run_worker(app, burst=True, ingest=False)
    bad, good = (Job.fetch(job_id(n), connection=redis_client) for n in (3, 4))
    assert bad.get_status() == "failed"
    assert bad.meta["error"] == f"{path}: not UTF-8 text (byte 0xf6 at offset 23)"
    assert good.get_status() == "finished"


def test_a_payload_that_keeps_failing_is_dead_lettered_after_5_attempts_and_blocks_nothing(
        config, redis_client, caplog):
    """A conf nested deeper than Python's stack raises RecursionError, which nobody foresaw: the
    loop keeps taking the jobs behind it, and gives it up after 5 attempts with the reason."""
    write_site(config.sites_dir, "deep", DEEP)
    push(redis_client, payload(5, dest="deep"), payload(6), payload(7))
    feedback = Recorder()
    ingest = make_ingest(config, feedback, consumer="looper")
    stop = threading.Event()
    thread = threading.Thread(target=ingest.run, args=(stop,))
    with caplog.at_level(logging.INFO, logger="migratio.ingest"):
        thread.start()
        try:
            wait_for(lambda: Job.exists(job_id(6), redis_client) and Job.exists(job_id(7), redis_client),
                     "the jobs behind the failing payload to run", 60)
            wait_for(lambda: dead_letters(redis_client, "atmosphere"),
                     lambda: f"the payload to be dead-lettered:\n{caplog.text[-3000:]}", 60)
        finally:
            stop.set()
            thread.join(30)
    assert not thread.is_alive()
    [entry] = dead_letters(redis_client, "atmosphere")
    assert entry["payload"] == payload(5, dest="deep")
    assert entry["reason"].startswith("could not be handled in 5 attempts; the last one: RecursionError: "
                                      "maximum recursion depth exceeded")
    assert [n for n in range(1, 6) if f"(attempt {n} of 5)" in caplog.text] == [1, 2, 3, 4, 5]
    assert "Traceback" in caplog.text  # the first attempt's, for whoever fixes it
    assert not Job.exists(job_id(5), redis_client)
    assert redis_client.llen(SOURCE) == 0 and not redis_client.exists(ATTEMPTS)
    assert feedback.lines == [(job_id(5), "deep", "Migration rejected: could not be handled in 5 attempts "
                                                  "(RecursionError); see migratio's log")]


def test_attempts_are_counted_in_redis_across_consumers_and_burst_runs(config, redis_client):
    """`worker --burst` tries a failing payload once per run (it waits at the back of the queue,
    behind the jobs that came after it); the count lives in Redis, so any consumer ends it."""
    write_site(config.sites_dir, "deep", DEEP)
    push(redis_client, payload(8, dest="deep"), payload(9))
    assert make_ingest(config).drain() == {"failed": 1, "enqueued": 1}
    assert redis_client.lrange(SOURCE, 0, -1) == [payload(8, dest="deep").encode()]
    push(redis_client, payload(10))
    assert make_ingest(config).drain() == {"failed": 1, "enqueued": 1}  # 10 ran although 8 was ahead of it
    for _ in range(2):
        assert make_ingest(config).drain() == {"failed": 1}
    assert make_ingest(config).drain() == {"dead": 1}
    assert dead_letters(redis_client, "atmosphere")[0]["reason"].startswith("could not be handled in 5 attempts")
    assert redis_client.llen(SOURCE) == 0 and not redis_client.exists(ATTEMPTS)
    assert Job.exists(job_id(9), redis_client) and Job.exists(job_id(10), redis_client)

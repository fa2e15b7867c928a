"""Ingest: Sidekiq-format jobs on a real Redis become RQ migration jobs, once each, or dead letters."""

import json
import logging
import threading

import pytest
from rq.job import Job

from migratio.queue.connections import ingest_client
from migratio.queue.enqueue import migration_queue
from migratio.queue.ingest import Ingest
from migratio.queue.views import dead_letters
from support.lab.services import RedisServer
from tests.builders import config_factory, write_site
from tests.doubles import Lines
from tests.waiting import wait_for

IMAGE = "6c3a7a9e-5f0e-4b43-9f4b-2f2b8a3a1d11"
SOURCE = "atmosphere:queue:migration_site-a"
OPENSTACK = "Migratio::Worker::OpenstackOpenstackMigrator"
AMAZON = "Migratio::Worker::OpenstackAmazonMigrator"


def payload(n: int = 0, image: str = IMAGE, dest: str = "site-b", klass: str = OPENSTACK, **changes) -> str:
    """A job as Sidekiq 6's client writes it (LPUSHed by `push`)."""
    data = {"retry": True, "queue": "migration_site-a", "class": klass, "args": [image, dest],
            "jid": f"{n:024x}", "created_at": 1795652252.5911708, "enqueued_at": 1795652252.592119}
    return json.dumps(data | changes, separators=(",", ":"))


def push(client, *raws: str) -> None:
    for raw in raws:
        client.sadd("atmosphere:queues", "migration_site-a")
        client.lpush(SOURCE, raw)


@pytest.fixture
def config(tmp_path, redis_server, redis_client):
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
    write_site(config.sites_dir, "aws-1", "type: aws\nregion: eu-west-1\n")
    return config


def make_ingest(config, feedback=None, **options) -> Ingest:
    client = ingest_client(config.redis_url, 0.2)
    return Ingest(client, config, migration_queue(config, client), feedback, block=0.2, **options)


def rq_ids(config, client):
    return [i for i in migration_queue(config, client).get_job_ids()]


def test_a_sidekiq_job_becomes_the_rq_job_keyed_on_its_jid(config, redis_client):
    push(redis_client, payload(1))
    assert make_ingest(config).drain() == {"enqueued": 1}
    job = Job.fetch("sidekiq-" + f"{1:024x}", connection=redis_client)
    assert list(job.args) == [IMAGE, "site-b"]
    assert job.meta["sidekiq_jid"] == f"{1:024x}" and job.meta["source"] == "atmosphere"
    assert job.meta["sidekiq_created_at"] == pytest.approx(1795652252.5911708)
    assert rq_ids(config, redis_client) == [job.id]
    assert redis_client.llen(SOURCE) == 0
    assert redis_client.keys("atmosphere:migratio:ingest:*") == []  # unregistered, nothing held


def test_a_sidekiq_8_job_with_millisecond_timestamps_is_accepted(config, redis_client):
    push(redis_client, payload(2, created_at=1795652252591, enqueued_at=1795652252592))
    assert make_ingest(config).drain() == {"enqueued": 1}
    job = Job.fetch("sidekiq-" + f"{2:024x}", connection=redis_client)
    assert job.meta["sidekiq_created_at"] == pytest.approx(1795652252.591)


def test_jobs_are_taken_oldest_first(config, redis_client):
    push(redis_client, *(payload(n) for n in range(1, 4)))
    make_ingest(config).drain()
    assert rq_ids(config, redis_client) == [f"sidekiq-{n:024x}" for n in range(1, 4)]


def test_bad_payloads_go_to_the_dead_letter_list_with_their_reason(config, redis_client, caplog):
    bad = {
        "{not json": "not JSON",
        payload(3, klass="Atmosphere::Nope"): "unknown class 'Atmosphere::Nope'",
        payload(4, args=[IMAGE, "site-b", "x"]): "expected 2 args",
        payload(5, image="not-a-uuid"): "invalid image id 'not-a-uuid'",
        payload(6, dest="nowhere"): "unknown destination site 'nowhere': no file ",
        payload(7, jid="short"): "invalid jid 'short'",
    }
    push(redis_client, *bad, payload(8))
    feedback = Lines()
    with caplog.at_level(logging.WARNING, logger="migratio.ingest"):
        assert make_ingest(config, feedback).drain() == {"dead": 6, "enqueued": 1}
    entries = list(reversed(dead_letters(redis_client, "atmosphere")))  # oldest first
    assert [e["payload"] for e in entries] == list(bad)
    for entry, reason in zip(entries, bad.values()):
        assert reason in entry["reason"]
        assert entry["queue"] == SOURCE and entry["at"].endswith("+00:00")
    assert "unknown destination site 'nowhere'" in caplog.text and "atmosphere:migratio:dead" in caplog.text
    assert rq_ids(config, redis_client) == [f"sidekiq-{8:024x}"]
    # Atmosphere hears about the ones that name an image it knows and a destination
    assert [(job.job_id, job.image_id, job.dest_site, text) for job, text in feedback.emitted] == [
        (f"sidekiq-{3:024x}", IMAGE, "site-b", "Migration rejected: unknown class 'Atmosphere::Nope' "
         "(expected Migratio::Worker::OpenstackOpenstackMigrator or Migratio::Worker::OpenstackAmazonMigrator)"),
        (f"sidekiq-{4:024x}", IMAGE, "site-b",
         "Migration rejected: expected 2 args [image_uuid, destination_site_id], got 3"),
        (f"sidekiq-{6:024x}", IMAGE, "nowhere", "Migration rejected: unknown destination site 'nowhere'"),
        ("sidekiq-?", IMAGE, "site-b", "Migration rejected: invalid jid 'short': expected 24 hex digits"),
    ]


def test_dead_letter_list_is_bounded(config, redis_client):
    push(redis_client, *(f"junk {n}" for n in range(5)))
    make_ingest(config, dead_max=3).drain()
    assert [e["payload"] for e in dead_letters(redis_client, "atmosphere")] == ["junk 4", "junk 3", "junk 2"]


def test_recovered_copy_of_an_enqueued_job_is_not_enqueued_again(config, redis_client):
    """The process died after the enqueue but before removing its copy: recovery drops the copy."""
    push(redis_client, payload(9))
    make_ingest(config).drain()
    ghost = "atmosphere:migratio:ingest:site-a:processing:ghost"
    redis_client.sadd("atmosphere:migratio:ingest:site-a:consumers", "ghost")
    redis_client.lpush(ghost, payload(9))  # its heartbeat is long gone
    assert make_ingest(config).drain() == {"duplicate": 1}
    assert rq_ids(config, redis_client) == [f"sidekiq-{9:024x}"]
    assert redis_client.exists(ghost) == 0


def test_a_processing_list_outside_the_registry_is_recovered_at_start(config, redis_client):
    redis_client.lpush("atmosphere:migratio:ingest:site-a:processing:lost", payload(10))
    assert make_ingest(config).drain() == {"enqueued": 1}


def test_a_live_consumers_payload_is_not_taken(config, redis_client):
    alive = make_ingest(config, consumer="alive")
    alive.beat()
    redis_client.lpush(SOURCE, payload(11))
    redis_client.lmove(SOURCE, alive.processing, "RIGHT", "LEFT")  # in flight
    other = make_ingest(config, consumer="other")
    assert other.recover(scan=True) == 0
    assert other.drain() == {}
    assert redis_client.llen(alive.processing) == 1
    assert alive.drain() == {"enqueued": 1}  # the owner finishes it
    assert rq_ids(config, redis_client) == [f"sidekiq-{11:024x}"]


def test_a_dead_consumers_payload_is_recovered_after_its_heartbeat_expires(config, redis_client):
    dead = make_ingest(config, consumer="dead", heartbeat_ttl=1)
    dead.beat()
    redis_client.lpush(SOURCE, payload(12))
    redis_client.lmove(SOURCE, dead.processing, "RIGHT", "LEFT")
    wait_for(lambda: not redis_client.exists(dead.keys.alive("dead")), "the heartbeat to expire", timeout=30)
    assert make_ingest(config).drain() == {"enqueued": 1}
    assert redis_client.exists(dead.processing) == 0
    assert not redis_client.sismember(dead.keys.consumers, "dead")


def test_a_payload_claimed_by_another_consumer_is_put_back(config, redis_client):
    push(redis_client, payload(13))
    redis_client.set(f"atmosphere:migratio:ingest:site-a:claim:{13:024x}", "someone", ex=60)
    assert make_ingest(config).drain() == {"busy": 1}
    assert redis_client.lrange(SOURCE, 0, -1) == [payload(13).encode()]
    redis_client.delete(f"atmosphere:migratio:ingest:site-a:claim:{13:024x}")
    assert make_ingest(config).drain() == {"enqueued": 1}


def test_two_consumers_never_take_the_same_job(config, redis_client):
    push(redis_client, *(payload(n) for n in range(100, 160)))
    counts = []
    consumers = [make_ingest(config) for _ in range(2)]
    threads = [threading.Thread(target=lambda i=i: counts.append(i.drain())) for i in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(c.get("enqueued", 0) for c in counts) == 60
    ids = rq_ids(config, redis_client)
    assert sorted(ids) == sorted(f"sidekiq-{n:024x}" for n in range(100, 160))


def test_class_and_site_type_disagreeing_is_only_a_warning(config, redis_client, caplog):
    push(redis_client, payload(14, klass=AMAZON, dest="site-b"))
    with caplog.at_level(logging.WARNING, logger="migratio.ingest"):
        assert make_ingest(config).drain() == {"enqueued": 1}
    assert "has class Migratio::Worker::OpenstackAmazonMigrator but site site-b is of type openstack" in caplog.text


def test_the_loop_takes_jobs_as_they_come_and_unregisters_on_stop(config, redis_client):
    ingest = make_ingest(config, consumer="looper")
    stop = threading.Event()
    thread = threading.Thread(target=ingest.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: redis_client.sismember(ingest.keys.consumers, "looper"), "the consumer to register",
                 timeout=30)
        push(redis_client, payload(15))
        wait_for(lambda: Job.exists(f"sidekiq-{15:024x}", redis_client), "the job to be enqueued", timeout=30)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert redis_client.keys("atmosphere:migratio:ingest:*") == []


def test_the_loop_waits_out_a_redis_outage(tmp_path, caplog):
    server = RedisServer(tmp_path)  # private: this test stops it
    server.start()
    config = config_factory(tmp_path, redis_url=server.url)
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
    ingest = make_ingest(config)
    stop = threading.Event()
    thread = threading.Thread(target=ingest.run, args=(stop,))
    try:
        with caplog.at_level(logging.INFO, logger="migratio.ingest"):
            thread.start()
            wait_for(lambda: "taking Sidekiq jobs" in caplog.text, "the loop to start", timeout=30)
            server.stop()
            wait_for(lambda: "Redis error" in caplog.text, "the outage to be noticed", timeout=60)
            server.start()
            client = ingest_client(server.url, 1)
            push(client, payload(16))
            wait_for(lambda: Job.exists(f"sidekiq-{16:024x}", client), "the job to be enqueued", timeout=90)
            wait_for(lambda: "Redis answers again" in caplog.text, "the recovery to be logged", timeout=30)
            client.close()
    finally:
        stop.set()
        thread.join(60)
        server.stop()
    assert not thread.is_alive()


def test_a_destination_with_a_concurrency_limit_gets_its_rate_limited_job(config, redis_client):
    write_site(config.sites_dir, "limited", "type: openstack\nhost: h\nuser: u\nmax_concurrent: 1\n")
    push(redis_client, payload(17, dest="limited"), payload(18, dest="limited"))
    assert make_ingest(config).drain() == {"enqueued": 2}
    for n in (17, 18):
        assert Job.fetch(f"sidekiq-{n:024x}", connection=redis_client).args[1] == "limited"

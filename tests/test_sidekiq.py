"""Sidekiq's wire format: parsing Atmosphere's jobs and building ours."""

import json
import re

import pytest

from migratio.queue import sidekiq
from migratio.queue.sidekiq import BadPayload, parse_migration

IMAGE = "6c3a7a9e-5f0e-4b43-9f4b-2f2b8a3a1d11"
JID = "8394fda58e89c539b5e37475"
# Byte for byte what Sidekiq 6.4.1's client wrote for Atmosphere's VmtMigrator (see push.rb).
SIDEKIQ_6 = ('{"retry":true,"queue":"migration_site-a","class":"Migratio::Worker::OpenstackOpenstackMigrator",'
             f'"args":["{IMAGE}","site-b"],"jid":"{JID}","created_at":1795652252.5911708,'
             '"enqueued_at":1795652252.592119}')


def sidekiq_8(**changes) -> str:
    """The same job as Sidekiq 8 writes it: integer millisecond timestamps."""
    data = json.loads(SIDEKIQ_6) | {"created_at": 1795652252591, "enqueued_at": 1795652252592}
    return json.dumps(data | changes)


def test_parses_a_sidekiq_6_job():
    request = parse_migration(SIDEKIQ_6.encode())
    assert (request.jid, request.image_id, request.dest) == (JID, IMAGE, "site-b")
    assert request.klass == "Migratio::Worker::OpenstackOpenstackMigrator"
    assert request.site_type == "openstack"
    assert request.queue == "migration_site-a"
    assert request.created_at == pytest.approx(1795652252.5911708)


def test_parses_a_sidekiq_8_job_with_millisecond_timestamps():
    request = parse_migration(sidekiq_8(**{"class": "Migratio::Worker::OpenstackAmazonMigrator"}))
    assert request.site_type == "aws"
    assert request.created_at == pytest.approx(1795652252.591)
    assert request.enqueued_at == pytest.approx(1795652252.592)


def test_extra_keys_and_odd_timestamps_do_not_reject_a_job():
    request = parse_migration(sidekiq_8(backtrace=True, tags=["x"], created_at="yesterday", enqueued_at=None))
    assert request.image_id == IMAGE and request.created_at is None and request.enqueued_at is None


def test_image_uuid_is_normalised_to_lower_case():
    assert parse_migration(sidekiq_8(args=[IMAGE.upper(), "site-b"])).image_id == IMAGE


@pytest.mark.parametrize("raw, reason", [
    (b"\xff\xfe", "not UTF-8"),
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (sidekiq_8(**{"class": "Atmosphere::Other"}), "unknown class 'Atmosphere::Other'"),
    (sidekiq_8(**{"class": ["x"]}), "unknown class ['x']"),
    (sidekiq_8(args="nope"), "'args' must be a list"),
    (sidekiq_8(args=[IMAGE]), "expected 2 args [image_uuid, destination_site_id], got 1"),
    (sidekiq_8(args=[IMAGE, "site-b", "x"]), "expected 2 args [image_uuid, destination_site_id], got 3"),
    (sidekiq_8(jid="abc"), "invalid jid 'abc': expected 24 hex digits"),
    (sidekiq_8(jid=None), "invalid jid None"),
    (sidekiq_8(jid="../../" + "a" * 18), "invalid jid"),
    (sidekiq_8(args=["not-a-uuid", "site-b"]), "invalid image id 'not-a-uuid': expected a UUID"),
    (sidekiq_8(args=[IMAGE, "../etc"]), "invalid site id '../etc'"),
    (sidekiq_8(args=[IMAGE, 7]), "invalid site id 7"),
])
def test_bad_payloads_say_why(raw, reason):
    with pytest.raises(BadPayload) as err:
        parse_migration(raw)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_a_rejection_names_the_image_and_destination_when_the_payload_does():
    with pytest.raises(BadPayload) as err:
        parse_migration(sidekiq_8(args=[IMAGE, "site-b", "extra"]))
    assert (err.value.image, err.value.dest, err.value.jid) == (IMAGE, "site-b", JID)
    with pytest.raises(BadPayload) as err:
        parse_migration(sidekiq_8(args=["not-a-uuid", "site-b"]))
    assert err.value.image is None  # nothing Atmosphere could match a status line to
    with pytest.raises(BadPayload) as err:
        parse_migration("{not json")
    assert (err.value.image, err.value.dest) == (None, None)


@pytest.mark.parametrize("value, seconds", [
    (1795652252.5911708, 1795652252.5911708),
    (1795652252, 1795652252.0),
    (1795652252591, 1795652252.591),
    (1795652252591.5, 1795652252.5915),
    (True, None), ("1795652252", None), (None, None), (-1, None),
])
def test_timestamps_of_both_styles(value, seconds):
    assert sidekiq.timestamp(value) == (pytest.approx(seconds) if seconds else None)


def test_job_payload_is_shaped_like_sidekiqs():
    payload = sidekiq.job_payload("K", ["a", "b"], "feedback", retry=False, now=1700000000.25)
    assert list(payload) == ["retry", "queue", "class", "args", "jid", "created_at"]
    assert re.fullmatch(r"[0-9a-f]{24}", payload["jid"])
    assert payload["created_at"] == 1700000000.25
    ms = sidekiq.job_payload("K", [], "q", retry=False, now=1700000000.25, timestamps="milliseconds")
    assert ms["created_at"] == 1700000000250


def test_push_writes_what_sidekiqs_client_writes(redis_client):
    payload = sidekiq.job_payload("K", ["a", "ü"], "feedback", retry=False, now=1700000000.5)
    sidekiq.push(redis_client, "atmosphere", payload, now=1700000001.5)
    assert redis_client.smembers("atmosphere:queues") == {b"feedback"}
    (raw,) = redis_client.lrange("atmosphere:queue:feedback", 0, -1)
    assert raw == sidekiq.dump(payload | {"enqueued_at": 1700000001.5}).encode()
    assert b" " not in raw and "ü".encode() in raw  # compact, UTF-8 like JSON.generate


def test_no_namespace_means_no_prefix(redis_client):
    sidekiq.push(redis_client, "", sidekiq.job_payload("K", [], "q", retry=True))
    assert redis_client.llen("queue:q") == 1 and redis_client.smembers("queues") == {b"q"}

"""Sidekiq's wire format: the jobs Atmosphere pushes to us and the ones we push back.

A Sidekiq client (6.x, as Atmosphere runs it) LPUSHes one JSON object per job to
`<namespace>:queue:<queue>` and adds `<queue>` to the set `<namespace>:queues`:

    {"retry": true, "queue": "migration_site-a",
     "class": "Migratio::Worker::OpenstackOpenstackMigrator",
     "args": ["<image uuid>", "<destination site id>"],
     "jid": "<24 hex digits>", "created_at": 1700000000.123, "enqueued_at": 1700000000.124}

Sidekiq 8 writes `created_at`/`enqueued_at` as integer milliseconds instead of float seconds;
both are accepted. Sidekiq servers take jobs from the right end (BRPOP).
"""

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from migratio import ids
from migratio.errors import InvalidInput
from migratio.queue.keys import queue_key, queues_key

JID_RE = re.compile(r"[0-9a-f]{24}")
MIGRATORS = {  # Atmosphere's class -> the destination type it means (a sanity check only)
    "Migratio::Worker::OpenstackOpenstackMigrator": "openstack",
    "Migratio::Worker::OpenstackAmazonMigrator": "aws",
}
FEEDBACK_CLASS = "Atmosphere::UpdateMigrationJobStatusWorker"
MS_THRESHOLD = 1e11  # epoch seconds stay below this until the year 5138; epoch milliseconds are above
Timestamps = Literal["seconds", "milliseconds"]


class BadPayload(InvalidInput):
    """A queued payload that cannot be a migration.

    `image` and `dest` are set when the payload names a valid image UUID and a destination, so
    the rejection can be reported back to Atmosphere (with `brief`).
    """

    def __init__(self, reason: str, image: str | None = None, dest: str | None = None,
                 jid: str | None = None, brief: str | None = None):
        super().__init__(reason)
        self.image, self.dest, self.jid = image, dest, jid
        self.brief = brief or str(self)  # what Atmosphere is told (no local paths)


@dataclass(frozen=True)
class MigrationRequest:
    """A valid migration job pushed by Atmosphere's VmtMigrator."""

    jid: str
    klass: str
    image_id: str
    dest: str
    queue: str | None = None
    created_at: float | None = None  # epoch seconds, whichever way Sidekiq wrote it
    enqueued_at: float | None = None

    @property
    def site_type(self) -> str:
        """The destination type Atmosphere believes the site has (from the class name)."""
        return MIGRATORS[self.klass]

    @property
    def meta(self) -> dict[str, Any]:
        """What the RQ job made of it keeps in its meta."""
        return {"source": "atmosphere", "sidekiq_jid": self.jid, "sidekiq_class": self.klass,
                "sidekiq_created_at": self.created_at}


def new_jid() -> str:
    """A job id like Sidekiq's own: SecureRandom.hex(12)."""
    return secrets.token_hex(12)


def parse_migration(raw: bytes | str) -> MigrationRequest:
    """Validate one payload from a migration queue; raises BadPayload with the reason."""
    data = _json_object(raw)
    args = data.get("args")
    image, dest = _named(args)
    jid = data.get("jid")
    jid = jid if isinstance(jid, str) and JID_RE.fullmatch(jid) else None

    def bad(reason: str) -> BadPayload:
        return BadPayload(reason, image, dest, jid)

    klass = data.get("class")
    if not isinstance(klass, str) or klass not in MIGRATORS:
        raise bad(f"unknown class {_show(klass)} (expected {' or '.join(MIGRATORS)})")
    if not isinstance(args, list):
        raise bad(f"'args' must be a list [image_uuid, destination_site_id], got {_show(args)}")
    if len(args) != 2:
        raise bad(f"expected 2 args [image_uuid, destination_site_id], got {len(args)}")
    if jid is None:
        raise bad(f"invalid jid {_show(data.get('jid'))}: expected 24 hex digits")
    try:  # the image id was validated by _named: when it found none, this raises the reason
        image_id, dest_id = image or ids.image_id(args[0]), ids.site_id(args[1])
    except InvalidInput as exc:
        raise bad(str(exc)) from None
    queue = data.get("queue") if isinstance(data.get("queue"), str) else None
    return MigrationRequest(jid, klass, image_id, dest_id, queue,
                            timestamp(data.get("created_at")), timestamp(data.get("enqueued_at")))


def timestamp(value: object) -> float | None:
    """Epoch seconds from a Sidekiq 6/7 float (seconds) or Sidekiq 8 integer (milliseconds).

    Timestamps decide nothing in migratio, so anything else (missing, a string) gives None
    rather than rejecting the job.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return value / 1000 if value >= MS_THRESHOLD else float(value)


def job_payload(klass: str, args: list[Any], queue: str, *, retry: bool | int,
                jid: str | None = None, now: float | None = None,
                timestamps: Timestamps = "seconds") -> dict[str, Any]:
    """A job as Sidekiq's client builds it (before `enqueued_at`, which `push` sets)."""
    return {"retry": retry, "queue": queue, "class": klass, "args": list(args),
            "jid": jid or new_jid(), "created_at": stamp(time.time() if now is None else now, timestamps)}


def push(redis, namespace: str, payload: dict[str, Any], timestamps: Timestamps = "seconds",
         now: float | None = None) -> None:
    """What Sidekiq::Client#raw_push does: SADD `queues` and LPUSH the job, in one transaction."""
    item = dict(payload, enqueued_at=stamp(time.time() if now is None else now, timestamps))
    pipe = redis.pipeline(transaction=True)
    pipe.sadd(queues_key(namespace), item["queue"])
    pipe.lpush(queue_key(namespace, item["queue"]), dump(item))
    pipe.execute()


def dump(payload: dict[str, Any]) -> str:
    """Compact JSON, as Sidekiq.dump_json (JSON.generate) writes it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def stamp(now: float, timestamps: Timestamps) -> float | int:
    """A timestamp as Sidekiq writes it: float seconds, or integer milliseconds (Sidekiq 8)."""
    return int(now * 1000) if timestamps == "milliseconds" else now


def _json_object(raw: bytes | str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except UnicodeDecodeError:
        raise BadPayload("not UTF-8 text") from None
    except ValueError as exc:
        raise BadPayload(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadPayload(f"not a JSON object: {_show(data)}")
    return data


def _named(args: object) -> tuple[str | None, str | None]:
    """The image UUID and destination a payload names, when it names them plainly."""
    if not isinstance(args, list) or len(args) < 2:
        return None, None
    image, dest = args[0], args[1]
    try:
        image = ids.image_id(image)
    except InvalidInput:
        image = None
    if not isinstance(dest, str) or not 0 < len(dest) <= 255 or not dest.isprintable():
        dest = None
    return image, dest


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

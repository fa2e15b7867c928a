"""How often the ingest has tried to handle each payload, counted in Redis (see migratio.queue.ingest).

An attempt is counted before the payload is handled, so one that kills the process handling it
counts too. The count is shared by every consumer of the site and kept in the hash
`<ns>:migratio:ingest:<site>:attempts` (field: a digest of the payload; `<digest>:error` holds the
last attempt's error), which expires a week after its last change.
"""

import hashlib

import redis

from migratio.queue.sidekiq import BadPayload, parse_migration

TTL = 7 * 24 * 3600


class Attempts:
    def __init__(self, client: redis.Redis, key: str, limit: int):
        self.redis, self.key, self.limit = client, key, limit

    def start(self, raw: bytes) -> int:
        """Count one more attempt at `raw`; returns its number (1 for the first)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(self.key, _digest(raw), 1)
        pipe.expire(self.key, TTL)
        return int(pipe.execute()[0])

    def undo(self, raw: bytes) -> None:
        """The attempt did not count (another consumer holds the payload)."""
        field = _digest(raw)
        if self.redis.hincrby(self.key, field, -1) <= 0:
            self.redis.hdel(self.key, field, f"{field}:error")

    def failed(self, raw: bytes, error: str) -> None:
        self.redis.hset(self.key, f"{_digest(raw)}:error", error)

    def last_error(self, raw: bytes) -> str | None:
        value = self.redis.hget(self.key, f"{_digest(raw)}:error")
        return value.decode("utf-8", "replace") if value is not None else None

    def forget(self, raw: bytes) -> None:
        """The payload is done with (handled or dead-lettered)."""
        field = _digest(raw)
        self.redis.hdel(self.key, field, f"{field}:error")


def gave_up(raw: bytes, attempts: int, error: str | None, kind: str | None = None) -> BadPayload:
    """The dead letter of a payload given up after `attempts` (the last one's `error`, see
    `describe`, of type `kind`), naming the image and destination it names so that Atmosphere
    hears of it."""
    try:
        request = parse_migration(raw)
        names = request.image_id, request.dest, request.jid
    except BadPayload as exc:
        names = exc.image, exc.dest, exc.jid
    except Exception:
        names = None, None, None
    reason = f"could not be handled in {attempts} attempts"
    brief = f"{reason} ({kind}); see migratio's log" if kind else f"{reason}; see migratio's log"
    last = error or "ended without an answer (the process handling it stopped)"
    return BadPayload(f"{reason}; the last one: {last}", *names, brief=brief)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:32]

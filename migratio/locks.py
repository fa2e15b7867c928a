"""A Redis lock per (image, destination) so two jobs never migrate the same image at once."""

import threading
import uuid

from redis import Redis

from .errors import TransientError

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""


class MigrationLock:
    """Held for a job's whole run; refreshed in the background, so `ttl` only bounds a crash."""

    def __init__(self, redis: Redis, namespace: str, image_id: str, dest: str, ttl: int):
        self.redis, self.ttl = redis, ttl
        self.key = f"migratio:{namespace}:lock:{image_id}:{dest}"
        self.what = f"image {image_id} to site {dest}"
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MigrationLock":
        if not self.redis.set(self.key, self.token, nx=True, ex=self.ttl):
            raise TransientError(f"another job is already migrating {self.what}; will retry")
        self._thread = threading.Thread(target=self._refresh, daemon=True, name="lock-refresh")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.token)
        except Exception:
            pass  # expiry releases it

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.redis.eval(_EXTEND, 1, self.key, self.token, self.ttl)
            except Exception:
                pass  # Redis away for a moment: the next round tries again

"""migratio's Redis clients: the worker's and CLI's (checked at connect), the ingest's, the feedback's.

Each has the timeouts its use needs; they all talk to `redis_url` from config.yml.
"""

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from migratio.conf.config import Config
from migratio.errors import ConfigError, MigratioError
from migratio.redact import Redactor

MIN_REDIS = (6, 2)  # BLMOVE/LMOVE: RQ 3 and the ingest
NEEDED_COMMANDS = ("blmove", "lmove")


class RedisUnavailable(MigratioError):
    pass


class RedisTooOld(ConfigError):
    """The Redis server lacks what RQ 3 and the ingest use: restarting cannot help."""


def connect(config: Config, redact: Redactor) -> redis.Redis:
    """A Redis client that answered PING and can run migratio; one clear error if not."""
    client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=5, health_check_interval=30,
                                  retry_on_timeout=True)
    where = redact(config.redis_url)
    try:
        client.ping()
        require_redis(client, where)
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {where}: {exc}") from None
    return client


def require_redis(client: redis.Redis, where: str) -> str:
    """The server's version; RedisTooOld unless it is >= 6.2 with BLMOVE and LMOVE enabled."""
    version = str(client.info("server").get("redis_version", "0"))
    numbers = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:2])
    need = ".".join(map(str, MIN_REDIS))
    if numbers < MIN_REDIS:
        raise RedisTooOld(f"Redis at {where} is version {version}; migratio needs Redis >= {need} "
                          f"(BLMOVE/LMOVE, used by RQ 3 and the Atmosphere ingest)")
    missing = [c.upper() for c in NEEDED_COMMANDS if not _has_command(client, c)]
    if missing:
        raise RedisTooOld(f"Redis at {where} (version {version}) has no {' and no '.join(missing)} command "
                          f"(renamed or disabled with rename-command); migratio needs it (Redis >= {need})")
    return version


def _has_command(client: redis.Redis, name: str) -> bool:
    """Asked without arguments, a known command says so ("wrong number of arguments"), and
    does nothing; a renamed or disabled one is unknown."""
    try:
        client.execute_command(name.upper())
    except redis.ResponseError as exc:
        return "unknown command" not in str(exc).lower()
    return True


def ingest_client(redis_url: str, block: float) -> redis.Redis:
    """Ingest's own connection: BLMOVE blocks, so the socket timeout must outlast it; the loop
    does its own backoff, so the client retries only once (a stale connection)."""
    return redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=block + 10,
                                health_check_interval=30, retry=Retry(NoBackoff(), 1))


def heartbeat_client(redis_url: str) -> redis.Redis:
    """The worker heartbeat's (migratio.queue.liveness): fails fast, it beats again soon."""
    return redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False)


def feedback_client(redis_url: str) -> redis.Redis:
    """A client that fails fast: a status line must never hold a migration up for long."""
    return redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False)

"""`migratio worker`: an RQ worker on this site's migration queue."""

import logging
import os
from typing import Mapping

import redis
from rq import Worker

from .config import Config
from .errors import MigratioError
from .job import bind_app
from .migration import App
from .queue import migration_queue
from .redact import Redactor
from .services import Services, default_services
from .status import FanOut, LogSink, StatusSink

log = logging.getLogger("migratio.worker")


class RedisUnavailable(MigratioError):
    pass


def connect(config: Config, redact: Redactor) -> redis.Redis:
    """A Redis client that answered PING; one clear error if it does not."""
    client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=5, health_check_interval=30,
                                  retry_on_timeout=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact(config.redis_url)}: {exc}") from None
    return client


def build_app(config: Config, client: redis.Redis, services: Services | None = None,
              sinks: tuple[StatusSink, ...] = (), environ: Mapping[str, str] | None = None) -> App:
    services = services or default_services(config, environ)
    return App(config, client, services, FanOut(LogSink(), *sinks))


def run_worker(app: App, burst: bool = False, worker_class: type[Worker] = Worker) -> bool:
    """Consume jobs until stopped (SIGTERM: warm shutdown) or, with burst, until the queue is empty."""
    bind_app(app)
    queue = migration_queue(app.config, app.redis)
    worker = worker_class([queue], connection=app.redis)
    log.info("worker %s (pid %s) consuming %s", worker.name, os.getpid(), queue.name)
    return worker.work(burst=burst, with_scheduler=True, logging_level=app.config.log_level)

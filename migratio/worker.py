"""`migratio worker`: an RQ worker on this site's migration queue."""

import logging
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import redis
from rq import Worker

from .config import Config
from .errors import MigratioError
from .feedback import FeedbackSink, feedback_client
from .ingest import Ingest, ingest_client
from .job import bind_app
from .migration import App
from .queue import migration_queue
from .redact import Redactor
from .services import Services, default_services
from .status import FanOut, LogSink, StatusSink

log = logging.getLogger("migratio.worker")

INGEST_BLOCK = 2.0  # seconds ingest blocks on Atmosphere's queue between checks for shutdown
FEEDBACK_FLUSH = 30.0  # seconds a work-horse keeps retrying undelivered status lines before exiting


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
              sinks: tuple[StatusSink, ...] = (), environ: Mapping[str, str] | None = None,
              redact: Redactor | None = None, feedback: bool = True) -> App:
    """With `feedback`, status lines also go to Atmosphere (`<namespace>:queue:feedback`)."""
    services = services or default_services(config, environ)
    redact = redact or Redactor()
    if feedback:
        sinks = (FeedbackSink(feedback_client(config.redis_url), config.namespace, redact), *sinks)
    return App(config, client, services, FanOut(LogSink(), *sinks), redact=redact)


class MigratioWorker(Worker):
    """RQ's forking worker; the work-horse delivers buffered status lines before it exits."""

    after_job: Callable[[], None] | None = None

    def perform_job(self, job, queue, execution) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        finally:
            if self.after_job:
                self.after_job()


def run_worker(app: App, burst: bool = False, worker_class: type[Worker] = MigratioWorker,
               ingest: bool = True) -> bool:
    """Consume jobs until stopped (SIGTERM: warm shutdown) or, with burst, until the queue is empty.

    With `ingest`, Atmosphere's Sidekiq jobs are moved into the queue too: by a thread of this
    (parent) process, or once before starting with burst.
    """
    bind_app(app)
    queue = migration_queue(app.config, app.redis)
    worker = worker_class([queue], connection=app.redis)
    if isinstance(worker, MigratioWorker):
        worker.after_job = lambda: flush_status(app.status, FEEDBACK_FLUSH)
    log.info("worker %s (pid %s) consuming %s", worker.name, os.getpid(), queue.name)
    if not ingest:
        return worker.work(burst=burst, with_scheduler=True, logging_level=app.config.log_level)
    with ingesting(app, burst):
        return worker.work(burst=burst, with_scheduler=True, logging_level=app.config.log_level)


@contextmanager
def ingesting(app: App, burst: bool) -> Iterator[Ingest]:
    """Ingest running for the duration (its own Redis connections: it runs beside RQ's forks)."""
    config = app.config
    client = ingest_client(config.redis_url, INGEST_BLOCK)
    feedback = FeedbackSink(feedback_client(config.redis_url), config.namespace, app.redact)
    ingest = Ingest(client, config, migration_queue(config, client), feedback, block=INGEST_BLOCK)
    stop, thread = threading.Event(), None
    try:
        if burst:
            _drain(ingest)
        else:
            thread = threading.Thread(target=ingest.run, args=(stop,), name="ingest", daemon=True)
            thread.start()
        yield ingest
    finally:
        stop.set()
        if thread:
            thread.join(INGEST_BLOCK + 15)
        feedback.flush(5)
        client.close()


def flush_status(status: object, timeout: float) -> None:
    """Give every sink that buffers (the feedback sink) up to `timeout` s to deliver."""
    for sink in getattr(status, "sinks", (status,)):
        flush = getattr(sink, "flush", None)
        if flush:
            try:
                flush(timeout)
            except Exception as exc:
                log.warning("status sink %s could not flush: %s", type(sink).__name__, exc)


def _drain(ingest: Ingest) -> None:
    try:
        counts = ingest.drain()
    except redis.RedisError as exc:
        log.error("ingest: could not take Atmosphere's jobs from %s: %s", ingest.keys.source, exc)
        return
    if counts:
        log.info("ingest: %s", ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))

"""`migratio worker`: an RQ worker on this site's migration queue."""

import logging
import os
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Mapping

import redis
from rq import Worker
from rq.registry import StartedJobRegistry

from migratio.conf.config import Config
from migratio.local.workdirs import remove_stale
from migratio.openstack.openssh import remove_control_dir
from migratio.pipeline.recorder import NullRecorder, Recorder
from migratio.pipeline.services import Services, default_services, preload
from migratio.pipeline.status import FanOut, LogSink, StatusSink
from migratio.queue.connections import feedback_client, heartbeat_client, ingest_client
from migratio.queue.enqueue import migration_queue
from migratio.queue.feedback import FeedbackRelay, FeedbackSink
from migratio.queue.ingest import Ingest
from migratio.queue.job import bind_app
from migratio.queue.liveness import Heartbeat
from migratio.queue.metrics import Metrics, WorkerGauges, open_metrics
from migratio.queue.migration import App, count_crashed
from migratio.queue.recovery import free_dead_scheduler_lock, recover_abandoned
from migratio.redact import Redactor

log = logging.getLogger("migratio.worker")

INGEST_BLOCK = 2.0  # seconds ingest blocks on Atmosphere's queue between checks for shutdown
FEEDBACK_FLUSH = 30.0  # seconds a work-horse keeps retrying undelivered status lines before exiting
REDIS_OUTAGE_WAIT = 600.0  # seconds a work-horse waits for Redis to come back to record a job's outcome


def build_app(config: Config, client: redis.Redis, services: Services | None = None,
              sinks: tuple[StatusSink, ...] = (), environ: Mapping[str, str] | None = None,
              redact: Redactor | None = None, feedback: bool = True) -> App:
    """With `feedback`, status lines also go to Atmosphere (`<namespace>:queue:feedback`).
    With `metrics_port`, the App counts into the worker's Prometheus metrics (served by run_worker)."""
    environ = os.environ if environ is None else environ
    services = services or default_services(config, environ)
    redact = redact or Redactor()
    metrics: Recorder = open_metrics(config, environ) or NullRecorder()
    if feedback:
        sinks = (feedback_sink(config, redact, metrics), *sinks)
    return App(config, client, services, FanOut(LogSink(), *sinks), redact=redact, metrics=metrics)


def feedback_sink(config: Config, redact: Redactor, metrics: Recorder | None = None) -> FeedbackSink:
    return FeedbackSink(feedback_client(config.redis_url), config.namespace, redact,
                        interval=config.feedback_interval, metrics=metrics)


class MigratioWorker(Worker):
    """RQ's forking worker, made to live through a Redis restart.

    The parent keeps watching its work-horse when a heartbeat cannot reach Redis (RQ would quit
    and orphan the horse); the horse waits for Redis before recording the job's outcome (RQ
    would record a finished migration as a crash), then delivers buffered status lines.
    """

    after_job: Callable[[], None] | None = None
    redact: Callable[[str], str] = Redactor()  # run_worker sets the App's (it knows the secrets by value)
    redis_outage_wait: float = REDIS_OUTAGE_WAIT
    revive_scheduler: bool = False  # not in burst mode, where the scheduler runs inline once
    metrics: Metrics | None = None
    horse_killed: Callable[[object, bool], None] | None = None  # (job's destination, retried)
    running_job: tuple[str, float] | None = None  # (job id, start as Unix time) while a horse runs it

    def main_work_horse(self, job, queue) -> None:
        if self.metrics:
            self.metrics.enter_horse()
        super().main_work_horse(job, queue)

    def perform_job(self, job, queue, execution) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        finally:
            if self.after_job:
                self.after_job()

    def execute_job(self, job, queue) -> None:
        self.running_job = (job.id, time.time())
        try:
            super().execute_job(job, queue)
        finally:
            self.running_job = None
            if self.metrics:
                self.metrics.horse_ended()
        self._revive_scheduler()

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage) -> None:
        """The horse died before it could count its job's end: counted here, as RQ will go on."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        remove_control_dir(job.id)  # its ssh master died with it (same process group): its socket stays
        if self.horse_killed:
            self.horse_killed(job.args[1] if len(job.args) > 1 else None, bool(job.retries_left))

    def maintain_heartbeats(self, job, execution) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("worker %s: heartbeat for job %s not sent, Redis unreachable (%s); "
                        "the job goes on", self.name, job.id, exc)
            return
        self._revive_scheduler()

    def _revive_scheduler(self) -> None:
        """Restart RQ's scheduler process if it died (it does when Redis goes away); RQ itself
        only checks at its 10-minute maintenance, and retries with a backoff wait for it."""
        scheduler = self.scheduler
        if not self.revive_scheduler or scheduler is None or self._stop_requested:
            return  # a stopping worker must not start a new scheduler process (it would wait on it)
        if scheduler._process is not None and scheduler._process.is_alive():
            return
        try:
            scheduler.acquire_locks(auto_start=True)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the next heartbeat tries again

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None) -> None:
        """RQ keeps `exc_string`, the failed job's traceback, in Redis (exc_info): redacted first."""
        super().handle_job_failure(job, queue, started_job_registry, self.redact(exc_string), execution)

    def handle_execution_ended(self, job, queue, heartbeat_ttl) -> None:
        wait_for_redis(self.connection, self.redis_outage_wait, f"record the outcome of job {job.id}")
        super().handle_execution_ended(job, queue, heartbeat_ttl)


def run_worker(app: App, burst: bool = False, worker_class: type[Worker] = MigratioWorker,
               ingest: bool = True) -> bool:
    """Consume jobs until stopped (SIGTERM: warm shutdown) or, with burst, until the queue is empty.

    With `ingest`, Atmosphere's Sidekiq jobs are moved into the queue too: by a thread of this
    (parent) process, or once before starting with burst. With `metrics_port`, the metrics are
    served from a thread of this process from the start.
    """
    bind_app(app)
    preload()
    queue = migration_queue(app.config, app.redis)
    recover(app, queue)
    heartbeat = app.heartbeat = Heartbeat(heartbeat_client(app.config.redis_url), app.config.namespace)
    worker = worker_class([queue], connection=app.redis, name=heartbeat.token)  # recovery reads its heartbeat
    with ExitStack() as stack:
        if isinstance(app.metrics, Metrics):
            stack.enter_context(exporting(app, app.metrics, worker, queue.key))
        if isinstance(worker, MigratioWorker):
            worker.after_job = lambda: flush_status(app.status, FEEDBACK_FLUSH)
            worker.redact = app.redact
            worker.revive_scheduler = not burst
        log.info("worker %s (pid %s) consuming %s", worker.name, os.getpid(), queue.name)
        stack.enter_context(beating(heartbeat))
        stack.enter_context(relaying(app.config, app.metrics))
        if ingest:
            stack.enter_context(ingesting(app, burst))
        return worker.work(burst=burst, with_scheduler=True, logging_level=app.config.log_level)


@contextmanager
def exporting(app: App, metrics: Metrics, worker: Worker, queue_key: str) -> Iterator[Metrics]:
    """The metrics endpoint for the duration; the worker tells it about its work-horses."""
    client = feedback_client(app.config.redis_url)  # fails fast: a scrape must not hang on Redis
    running = (lambda: worker.running_job) if isinstance(worker, MigratioWorker) else (lambda: None)
    metrics.serve(WorkerGauges(app.config, client, queue_key, running), app.config.sites_dir)
    if isinstance(worker, MigratioWorker):
        worker.metrics, worker.horse_killed = metrics, lambda dest, retried: count_crashed(app, dest, retried)
    log.info("metrics on http://%s:%s/metrics (values in %s)", metrics.listen, metrics.port, metrics.directory)
    try:
        yield metrics
    finally:
        metrics.stop()
        client.close()


@contextmanager
def beating(heartbeat: Heartbeat) -> Iterator[Heartbeat]:
    """This worker's heartbeat for the duration (see migratio.queue.liveness); the locks of its
    jobs name its token. It has a Redis client of its own, closed at the end."""
    heartbeat.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
        heartbeat.redis.close()


@contextmanager
def relaying(config: Config, metrics: Recorder | None = None) -> Iterator[FeedbackRelay]:
    """The feedback relay as a thread of this (main) process: work-horses never wait for the
    feedback interval; lines that wait are sent from here (see migratio.feedback)."""
    client = feedback_client(config.redis_url)
    relay = FeedbackRelay(client, config.namespace, config.feedback_interval, metrics=metrics)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop(timeout=2 * config.feedback_interval + 5)
        client.close()


@contextmanager
def ingesting(app: App, burst: bool) -> Iterator[Ingest]:
    """Ingest running for the duration (its own Redis connections: it runs beside RQ's forks)."""
    config = app.config
    client = ingest_client(config.redis_url, INGEST_BLOCK)
    feedback = feedback_sink(config, app.redact, app.metrics)
    ingest = Ingest(client, config, migration_queue(config, client), feedback, block=INGEST_BLOCK,
                    metrics=app.metrics)
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


def recover(app: App, queue) -> None:
    """At start: hand back jobs a dead worker of this host left started, then remove temp dirs
    of jobs that no longer run (work_dir is shared by this host's workers)."""
    for job_id in recover_abandoned(queue, app.config.name, app.status, namespace=app.config.namespace):
        log.warning("job %s was left running by a worker that died: handed back to RQ", job_id)
    free_dead_scheduler_lock(queue)  # else retries scheduled with a backoff wait for its expiry
    remove_stale(app.config.work_dir, lambda: started_job_ids(app.redis))


def started_job_ids(client: redis.Redis) -> set[str]:
    """Ids of the jobs running now, on any queue of this Redis."""
    from rq import Queue

    ids: set[str] = set()
    for queue in Queue.all(connection=client):
        ids.update(StartedJobRegistry(queue.name, connection=client).get_job_ids(cleanup=False))
    return ids


def wait_for_redis(client: redis.Redis, timeout: float, what: str) -> bool:
    """Block until Redis answers PING (True) or `timeout` seconds passed (False)."""
    deadline, delay, warned = time.monotonic() + timeout, 0.5, False
    while True:
        try:
            client.ping()
            if warned:
                log.info("Redis answers again: going on to %s", what)
            return True
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                log.error("Redis still unreachable after %.0fs: cannot %s (%s)", timeout, what, exc)
                return False
            if not warned:
                log.warning("Redis unreachable (%s): waiting up to %.0fs to %s", exc, timeout, what)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


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

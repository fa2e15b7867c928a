"""The worker's Prometheus metrics: every metric migratio exports is defined in this module.

`migratio worker` serves them on `metrics_listen`:`metrics_port` (config.yml; off by default).
RQ forks a work-horse per job, and what a horse counts must outlive it, so the values live in
prometheus_client's multiprocess mode: memory-mapped files in a directory of this worker,
`<work_dir>/metrics@<port>` (the '@' keeps it apart from the per-job dirs `remove_stale` removes),
emptied at start. Each worker has two writers, so the number of files stays constant however
many jobs run: the main process ("main": ingest, feedback relay) and its work-horse ("horse":
one at a time, each one goes on with the counts of the one before). A value is written to its
file when it changes, so a SIGKILLed horse loses nothing it counted; its live gauges (the
transfer rate) are dropped when it ends (`horse_ended`). What is read at scrape time (queue
lengths, the dead-letter list, the running job) and the worker's info come from
`WorkerGauges`, the process' CPU and memory from prometheus_client's process collector.

The metrics are built by `open_metrics`, called by the worker at start (it sets
PROMETHEUS_MULTIPROC_DIR before any value exists); code below the worker only sees the
`migratio.pipeline.recorder.Recorder` interface.
"""

import os
import threading
from pathlib import Path
from typing import Callable, Iterator, Mapping

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

import migratio
from migratio.conf.config import Config
from migratio.conf.sites import list_sites, load_site
from migratio.errors import ConfigError, MigratioError
from migratio.pipeline.recorder import UNKNOWN, FeedbackOutcome, IngestOutcome, Outcome
from migratio.queue.keys import FEEDBACK_QUEUE, IngestKeys, dead_key, queue_key

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
INSTANCE_VAR = "MIGRATIO_INSTANCE"  # systemd's instance number (migratio-worker@N): port + N - 1
OUTCOMES: tuple[Outcome, ...] = ("finished", "already_present", "failed", "retried", "waiting", "rejected")
UNSUCCESSFUL = OUTCOMES[2:]  # all a job to a site without a loadable conf can end as
INGEST_OUTCOMES: tuple[IngestOutcome, ...] = ("enqueued", "duplicate", "dead_lettered")
FEEDBACK_OUTCOMES: tuple[FeedbackOutcome, ...] = ("sent", "buffered", "dropped")
MIGRATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600, 43200)
STEP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
DEST = ["dest", "type"]


def metrics_port(config: Config, environ: Mapping[str, str]) -> int | None:
    """This worker's port: `metrics_port`, + N - 1 for instance N of the systemd template."""
    if config.metrics_port is None:
        return None
    instance = environ.get(INSTANCE_VAR, "1")
    if not instance.isdigit() or int(instance) < 1:
        raise ConfigError(f"${INSTANCE_VAR} must be a worker number (1, 2, ...) to offset metrics_port, "
                          f"got {instance[:40]!r}")
    port = config.metrics_port + int(instance) - 1
    if not 0 < port < 65536:
        raise ConfigError(f"key 'metrics_port': {config.metrics_port} + instance {instance} - 1 is not a TCP port")
    return port


def open_metrics(config: Config, environ: Mapping[str, str]) -> "Metrics | None":
    """The worker's metrics when `metrics_port` is set (one per process: it sets where every
    prometheus_client value of the process is kept); None otherwise."""
    port = metrics_port(config, environ)
    return None if port is None else Metrics(config.work_dir / f"metrics@{port}", config.metrics_listen, port)


class Metrics:
    """The Recorder of a worker, and its HTTP endpoint (`serve`/`stop`)."""

    def __init__(self, directory: Path, listen: str, port: int):
        self.directory, self.listen, self.port = directory, listen, port
        self._main_pid, self._horse = os.getpid(), False
        self._server = self._thread = None
        # Held across fork(): a thread of the main process (ingest, relay) updating a value while
        # RQ forks would leave prometheus_client's lock taken for ever in the horse.
        self._lock = threading.Lock()
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release,
                            after_in_child=self._lock.release)
        os.environ[MULTIPROC_VAR] = str(directory)  # read when a value opens its file (horses too)
        values.ValueClass = values.MultiProcessValue(self._writer)
        self.migrations = Counter("migratio_migrations", "Migration attempts, by how they ended",
                                  [*DEST, "outcome"], registry=None)
        self.duration = Histogram("migratio_migration_duration_seconds", "Duration of successful migrations",
                                  DEST, buckets=MIGRATION_BUCKETS, registry=None)
        self.steps = Histogram("migratio_step_duration_seconds", "Duration of pipeline steps (failed ones too)",
                               [*DEST, "step"], buckets=STEP_BUCKETS, registry=None)
        self.sent = Counter("migratio_bytes_sent", "Payload bytes sent to destinations", DEST, registry=None)
        self.rate = Gauge("migratio_transfer_rate_bytes", "Transfer rate of the running job, bytes per second",
                          ["dest"], multiprocess_mode="livesum", registry=None)
        self.ingest = Counter("migratio_ingest_jobs", "Atmosphere's Sidekiq jobs taken by the ingest",
                              ["outcome"], registry=None)
        self.feedback = Counter("migratio_feedback_lines", "Status lines for Atmosphere: sent, made to wait "
                                "(buffered) or given up (dropped)", ["outcome"], registry=None)

    # --- Recorder --------------------------------------------------------------------------

    def migration_ended(self, dest: str, dest_type: str, outcome: Outcome, seconds: float | None) -> None:
        with self._lock:
            self.migrations.labels(dest, dest_type, outcome).inc()
            if seconds is not None:
                self.duration.labels(dest, dest_type).observe(seconds)

    def step_ended(self, dest: str, dest_type: str, step: str, seconds: float) -> None:
        with self._lock:
            self.steps.labels(dest, dest_type, step).observe(seconds)

    def bytes_sent(self, dest: str, dest_type: str, count: int) -> None:
        with self._lock:
            self.sent.labels(dest, dest_type).inc(count)

    def transfer_rate(self, dest: str, bytes_per_second: float) -> None:
        with self._lock:
            self.rate.labels(dest).set(bytes_per_second)

    def ingested(self, outcome: IngestOutcome) -> None:
        with self._lock:
            self.ingest.labels(outcome).inc()

    def feedback_lines(self, outcome: FeedbackOutcome, count: int = 1) -> None:
        if count:
            with self._lock:
                self.feedback.labels(outcome).inc(count)

    # --- the worker's side -----------------------------------------------------------------

    def serve(self, gauges: "WorkerGauges", sites_dir: Path) -> None:
        """Start the endpoint (a thread of this process); counts of an earlier run are removed,
        and every counter of every loadable destination starts at 0 (so `increase()` sees its
        first increment)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(self.directory))
        ProcessCollector(registry=registry)
        registry.register(gauges)
        try:
            self._server, self._thread = start_http_server(self.port, self.listen, registry)
        except OSError as exc:
            raise ConfigError(f"keys 'metrics_listen', 'metrics_port': cannot serve metrics on "
                              f"{self.listen}:{self.port}: {exc.strerror or exc}") from None
        for stale in self.directory.glob("*.db"):
            stale.unlink()
        with self._lock:
            self._zero(sites_dir)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def enter_horse(self) -> None:
        """In a new work-horse: its values go to the horse's files; the endpoint is the parent's."""
        self._horse = True
        if self._server is not None:
            self._server.socket.close()  # this process' copy: a surviving horse must not hold the port

    def horse_ended(self) -> None:
        """The work-horse ended (also when killed): its live gauges go; its counts stay."""
        mark_process_dead("horse", str(self.directory))

    def _writer(self) -> str:
        """Which file set a value goes to (see the module docstring); other children keep their own."""
        pid = os.getpid()
        return "main" if pid == self._main_pid else "horse" if self._horse else str(pid)

    def _zero(self, sites_dir: Path) -> None:
        for outcome in INGEST_OUTCOMES:
            self.ingest.labels(outcome)
        for line in FEEDBACK_OUTCOMES:
            self.feedback.labels(line)
        for outcome in UNSUCCESSFUL:
            self.migrations.labels(UNKNOWN, UNKNOWN, outcome)
        for site_id in list_sites(sites_dir):
            try:
                site = load_site(sites_dir, site_id)
            except MigratioError:  # its jobs fail until it is fixed
                for outcome in UNSUCCESSFUL:
                    self.migrations.labels(site_id, UNKNOWN, outcome)
                continue
            for outcome in OUTCOMES:
                self.migrations.labels(site.id, site.type, outcome)
            self.sent.labels(site.id, site.type)
            self.duration.labels(site.id, site.type)


class WorkerGauges:
    """What the endpoint reads when it is scraped: this worker, its running job, and the lengths
    of the queues it works with (one Redis round trip; left out when Redis does not answer)."""

    def __init__(self, config: Config, client: redis.Redis, rq_queue_key: str,
                 running: Callable[[], tuple[str, float] | None]):
        self.config, self.client, self.running = config, client, running
        self.queues = [rq_queue_key, IngestKeys(config.namespace, config.name).source,
                       queue_key(config.namespace, FEEDBACK_QUEUE)]
        self.dead = dead_key(config.namespace)

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("migratio_worker", "This worker: migratio's version, the site it serves",
                               value={"version": migratio.__version__, "name": self.config.name})
        yield GaugeMetricFamily("migratio_job_timeout_seconds", "job_timeout of this worker's jobs",
                                value=self.config.job_timeout)
        started = GaugeMetricFamily("migratio_job_start_time_seconds",
                                    "Start of the job this worker runs, Unix time (none when idle)", labels=["job_id"])
        job = self.running()
        if job is not None:
            started.add_metric([job[0]], job[1])
        yield started
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in (*self.queues, self.dead):
                pipe.llen(key)
            *lengths, dead = pipe.execute()
        except redis.RedisError:
            yield GaugeMetricFamily("migratio_redis_up", "Whether Redis answered this scrape", value=0)
            return
        yield GaugeMetricFamily("migratio_redis_up", "Whether Redis answered this scrape", value=1)
        queued = GaugeMetricFamily("migratio_queue_length", "Jobs waiting in a queue (its Redis key)",
                                   labels=["queue"])
        for key, length in zip(self.queues, lengths):
            queued.add_metric([key], length)
        yield queued
        yield GaugeMetricFamily("migratio_dead_letter_length", "Entries in the ingest's dead-letter list",
                                value=dead)

"""migratio itself: a real `migratio worker` subprocess, a real job, enqueue to verified."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus

from bench.measure import TreeSampler
from migratio.conf.config import load_config
from migratio.queue.enqueue import enqueue_migration, migration_queue
from support.lab.config import write_migratio_config

DEST_SITE = "site-b"
ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)


def write_config(lab, directory: Path, site_conf: dict) -> Path:
    """config.yml (+ clouds.yaml and sites/site-b.conf) as an operator would write them."""
    return write_migratio_config(lab, directory, site_b=site_conf, retries=0, log_level="INFO")


class WorkerProcess:
    """`migratio --config CFG worker`, started idle; `stop()` (SIGTERM, warm) reaps it with wait4."""

    def __init__(self, config_path: Path, env: dict, log: Path):
        self.config = load_config(config_path)
        self.redis = redis.Redis.from_url(self.config.redis_url)
        self.queue: Queue = migration_queue(self.config, self.redis)
        migratio = Path(sys.executable).parent / "migratio"
        self.argv = [str(migratio), "--config", str(config_path), "worker"]
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None
        self.sampler: TreeSampler | None = None
        self.stopped = False

    def start(self, timeout: float = 120) -> "WorkerProcess":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)
        self.sampler = TreeSampler(self.proc.pid).__enter__()
        deadline = time.monotonic() + timeout
        while not any(w.pid == self.proc.pid and w.get_state() == "idle"
                      for w in Worker.all(queue=self.queue)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"migratio worker did not start (see {self.log})")
            time.sleep(0.1)
        return self

    def migrate(self, image_id: str, timeout: float = 6 * 3600) -> dict:
        """Enqueue one migration and wait until it ends; timings from RQ's own timestamps."""
        start = time.monotonic()
        job = enqueue_migration(self.queue, self.config, image_id, DEST_SITE)
        deadline = start + timeout
        while job.get_status(refresh=True) not in ENDED:
            if self.proc.poll() is not None:
                raise RuntimeError(f"migratio worker exited ({self.proc.returncode}) mid-job, see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job.id} did not end within {timeout:.0f} s")
            time.sleep(0.05)
        polled = time.monotonic() - start
        job = Job.fetch(job.id, connection=self.redis)
        if job.get_status() != JobStatus.FINISHED:
            raise RuntimeError(f"migratio job {job.id} {job.get_status()}: {job.meta.get('error')}")
        return {"job_id": job.id, "wall_s": _seconds(job.enqueued_at, job.ended_at),
                "worker_s": _seconds(job.started_at, job.ended_at), "polled_wall_s": polled,
                "result": job.return_value(), "steps": step_times(self.config.log_dir, job.id)}

    def stop(self, timeout: float = 300) -> None:
        """Warm shutdown (SIGTERM), then stop sampling its memory."""
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        finally:
            if self.sampler:
                self.sampler.__exit__(None, None, None)

    def memory(self) -> dict:
        return self.sampler.result() if self.sampler else {}

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def step_times(log_dir: Path, job_id: str) -> dict[str, float]:
    """Seconds per step, from the job's own log (`log/jobs/<id>.log`: "step=NAME done in 1.2s")."""
    path = log_dir / "jobs" / f"{job_id}.log"
    times: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return times
    pattern = re.compile(r"step=(\S+) done in ([\d.]+)s")
    for line in lines:
        match = pattern.search(line)
        if match:
            times[match.group(1)] = float(match.group(2))
    return times


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()

"""A test-only pipeline step that waits at a gate in Redis, and a `migratio` entry point with it.

Worker subprocesses run `python -m tests.gatestep --config FILE worker`: the real CLI and the
real forking RQ worker, with one extra step type ("gate") registered for openstack sites. A
site conf with `pipeline: [gate]` then runs jobs that

- record `gate_entered` / `gate_left` (time.time()) and the worker's pid in the job meta,
- push their job id to the Redis list `gate:<site>:entered`,
- wait until the key `gate:<site>:open` exists (polled; at most GATE_TIMEOUT seconds).

So a test decides when a job may end, and can see which jobs were inside at once.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from migratio.cli import main
from migratio.errors import TransientError
from migratio.pipeline.context import Context
from migratio.pipeline.runner import Step
from migratio.steps import REGISTRY
from support.lab.services import REPO

GATE_TIMEOUT = 300
MIB = 1024 * 1024


def entered_key(site_id: str) -> str:
    return f"gate:{site_id}:entered"


def open_key(site_id: str) -> str:
    return f"gate:{site_id}:open"


class Gate(Step):
    name = "gate"

    def run(self, ctx: Context) -> str | None:
        client = redis.Redis.from_url(ctx.config.redis_url)
        ctx.meta.update(gate_entered=time.time(), worker_pid=os.getppid())
        ctx.progress(3 * MIB, 4 * MIB, float(MIB))  # what `migratio status` shows while it waits
        client.rpush(entered_key(ctx.site.id), ctx.job.job_id)
        ctx.log.info("waiting at the gate")
        deadline = time.monotonic() + GATE_TIMEOUT
        while not client.exists(open_key(ctx.site.id)):
            if time.monotonic() > deadline:
                raise TransientError(f"gate of {ctx.site.id} never opened")
            time.sleep(0.05)
        ctx.meta.update(gate_left=time.time())
        ctx.dest_image_id = f"gated-{ctx.job.job_id}"
        return "Gate passed"


REGISTRY["openstack"][Gate.name] = Gate


class WorkerProcess:
    """`migratio worker` (with the gate step) in its own process group; stderr kept in a file."""

    def __init__(self, config_file: Path, stderr_file: Path, *args: str):
        self.stderr_file = stderr_file
        with open(stderr_file, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.gatestep", "--config", str(config_file), "worker", *args],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO)})

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Test teardown: whatever is left of this worker's process group goes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


if __name__ == "__main__":
    main()

"""The pipeline runner: steps in order over a shared Context, with cleanups on every exit path."""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from migratio.conf.config import Config
from migratio.conf.sites import Site
from migratio.local.commands import Commands
from migratio.openstack.glance import SourceImage
from migratio.pipeline.status import JobInfo, Meta, ProgressThrottle, StatusSink
from migratio.units import format_size

log = logging.getLogger("migratio.pipeline")


@dataclass
class Context:
    job: JobInfo
    config: Config
    site: Site
    services: Any  # migratio.services.Services
    workdir: Path
    meta: Meta
    status: StatusSink
    clock: Callable[[], float] = time.monotonic
    image: SourceImage | None = None
    payload: Path | None = None  # the file that is sent (the source file, or its conversion)
    payload_format: str | None = None
    payload_hash: dict[str, str] = field(default_factory=dict)  # algo -> hex digest of payload
    result: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # set when nothing is left to do (e.g. already present)
    step: str = "-"
    steps_done: list[str] = field(default_factory=list)
    retries_left: int = 0  # automatic retries the job still has (a retryable failure keeps resumable files)
    _on_exit: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _kept_for_retry: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _on_failure: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _throttle: ProgressThrottle | None = None

    @property
    def log(self) -> logging.LoggerAdapter:
        return JobLog(log, {"job_id": self.job.job_id, "step": self.step})

    @property
    def commands(self) -> Commands:
        return Commands(self.log)

    def say(self, text: str) -> None:
        """A status line for Atmosphere and the log."""
        self.status.emit(self.job, text)

    def progress(self, done: int, total: int | None, rate: float | None = None) -> None:
        """Record bytes done in the job meta; a throttled status line goes out too."""
        self.meta.update(bytes_done=done, bytes_total=total, rate=rate, progress_at=time.time())
        if self._throttle is None:
            self._throttle = ProgressThrottle(self.clock)
        if total and self._throttle.due(done, total):
            self.say(f"{self.step}: {100 * done // total}% ({format_size(done)} of {format_size(total)})")

    def on_exit(self, what: str, action: Callable[[], None], keep_for_retry: bool = False) -> None:
        """Run `action` when the job ends, however it ends (temp files, staged copies).

        With `keep_for_retry`, a failure that will be retried skips it (a partial staged file is
        kept for the retry to resume from); success and final failures still run it.
        """
        (self._kept_for_retry if keep_for_retry else self._on_exit).append((what, action))

    def on_failure(self, what: str, action: Callable[[], None]) -> None:
        """Run `action` only if the job fails (a half-made destination image)."""
        self._on_failure.append((what, action))

    def forget_failure_action(self, what: str) -> None:
        self._on_failure = [(w, a) for w, a in self._on_failure if w != what]

    def forget_exit_action(self, what: str) -> None:
        """Drop an on_exit action that has nothing left to do (e.g. its file is already gone)."""
        self._on_exit = [(w, a) for w, a in self._on_exit if w != what]
        self._kept_for_retry = [(w, a) for w, a in self._kept_for_retry if w != what]

    def will_retry(self, exc: BaseException) -> bool:
        """Whether RQ runs the job again after `exc` (as run_migration and migratio.job decide)."""
        return self.retries_left > 0 and getattr(exc, "retryable", True) and isinstance(exc, Exception)

    def run_cleanups(self, failed: bool, retrying: bool = False) -> None:
        kept = [] if retrying else self._kept_for_retry[::-1]
        actions = (self._on_failure[::-1] if failed else []) + kept + self._on_exit[::-1]
        self._on_failure, self._on_exit, self._kept_for_retry = [], [], []
        for what, action in actions:
            try:
                action()
                self.log.info("cleanup: %s", what)
            except Exception as exc:
                self.log.warning("cleanup failed: %s: %s", what, exc)


class Step:
    """A pipeline step. `run` returns the status line to send when it is done (or None)."""

    name: ClassVar[str]
    always: ClassVar[bool] = False  # runs even when an earlier step finished the job early

    def run(self, ctx: Context) -> str | None:
        raise NotImplementedError


class JobLog(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"job={self.extra['job_id']} step={self.extra['step']} {msg}", kwargs


def run_pipeline(ctx: Context, steps: list[Step]) -> dict[str, Any]:
    names = [s.name for s in steps]
    ctx.meta.update(state="running", steps=names, steps_done=[], step=None, error=None)
    ctx.say("Migration started")
    failed, retrying = True, False
    try:
        for step in steps:
            if ctx.finished and not step.always:
                continue
            _run_step(ctx, step)
        failed = False
    except BaseException as exc:
        retrying = ctx.will_retry(exc)
        raise
    finally:
        ctx.step = "cleanup"
        ctx.run_cleanups(failed, retrying)
    return ctx.result


def _run_step(ctx: Context, step: Step) -> None:
    ctx.step = step.name
    ctx._throttle = None
    ctx.meta.update(step=step.name, bytes_done=None, bytes_total=None, rate=None)
    ctx.log.info("started")
    start = ctx.clock()
    try:
        line = step.run(ctx)
    except Exception as exc:
        ctx.log.error("failed after %.1fs: %s", ctx.clock() - start, exc)
        raise
    ctx.log.info("done in %.1fs", ctx.clock() - start)
    ctx.steps_done.append(step.name)
    ctx.meta.update(steps_done=list(ctx.steps_done))
    if line:
        ctx.say(line)

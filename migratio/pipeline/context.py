"""What one job's steps share: the job, its site and clients, what each step hands the next
(typed fields, see `Fact`), the job's result built from them, and the cleanups to run at the end."""

import contextlib
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Mapping

from migratio.conf.config import Config
from migratio.conf.sites import OpenStackOptions, Site
from migratio.local.commands import Commands
from migratio.logs import set_job_fields
from migratio.openstack.glance import SourceImage
from migratio.pipeline.recorder import NullRecorder, Recorder
from migratio.pipeline.services import Services
from migratio.pipeline.status import JobInfo, Meta, ProgressThrottle, StatusSink
from migratio.units import format_size

if TYPE_CHECKING:  # (paramiko: imported when a job first needs a head node)
    from migratio.openstack.glance_protocol import Glance
    from migratio.openstack.ssh import RemoteShell

log = logging.getLogger("migratio.pipeline")

Action = tuple[str, Callable[[], None]]  # (what it does, for the log; the action)


class Fact(Enum):
    """What a step hands later steps through the Context (see Step.needs and Step.provides)."""

    IMAGE = "the located source image"  # ctx.image, with the path of its data
    INSPECTED = "the inspected source image"  # ctx.image checked by qemu-img info (nothing is sent unchecked)
    PAYLOAD = "the payload to send"  # ctx.payload and ctx.payload_format
    DEST_IMAGE = "the destination image id"  # ctx.dest_image_id


class StepOrderError(RuntimeError):
    """A step ran without what it needs: the pipeline was not built by migratio.steps.build_steps."""


@dataclass
class Context:
    job: JobInfo
    config: Config
    site: Site
    services: Services
    workdir: Path
    meta: Meta
    status: StatusSink
    clock: Callable[[], float] = time.monotonic
    retries_left: int = 0  # automatic retries the job still has (a retried failure keeps resumable files)
    metrics: Recorder = field(default_factory=NullRecorder)  # the worker's metrics (migratio.queue.metrics)
    image: SourceImage | None = None
    payload: Path | None = None  # the file that is sent (the source file, or its conversion)
    payload_format: str | None = None
    payload_hash: dict[str, str] = field(default_factory=dict)  # algo -> hex digest of payload
    dest_image_id: str | None = None  # the destination's copy (Glance image id or AMI id)
    already_present: bool | None = None  # None: not said (the AWS import leaves it out of the result)
    snapshot_ids: list[str] | None = None  # the AMI's EBS snapshots
    region: str | None = None  # the AMI's region
    verified: dict[str, str] | None = None  # algo -> digest the destination reported and that matched
    details: dict[str, object] = field(default_factory=dict)  # more for the result, read by no step
    finished: bool = False  # set when nothing is left to do (e.g. already present)
    step: str = "-"
    steps_done: list[str] = field(default_factory=list)
    _on_exit: list[Action] = field(default_factory=list)
    _kept_for_retry: list[Action] = field(default_factory=list)
    _on_failure: list[Action] = field(default_factory=list)
    _throttle: ProgressThrottle | None = None
    _sent: int = 0  # bytes this step reported through `sending` (counted as sent once)
    _step_start: float = 0.0
    destination: "Glance | None" = None  # the destination Glance, opened once per job (steps.openstack)
    _shell: "RemoteShell | None" = None  # the job's one SSH connection to the head node (see `remote`)

    @property
    def result(self) -> Mapping[str, object]:
        """The job's result (what RQ keeps and `migratio status` shows), built from the fields above."""
        said = {"dest_image_id": self.dest_image_id, "already_present": self.already_present,
                "snapshot_ids": self.snapshot_ids, "region": self.region, "verified": self.verified}
        return MappingProxyType({**self.details, **{k: v for k, v in said.items() if v is not None}})

    def require_image(self) -> SourceImage:
        """The located source image (Fact.IMAGE)."""
        if self.image is None or self.image.path is None:
            raise self._unmet(Fact.IMAGE)
        return self.image

    def require_payload(self) -> Path:
        """The file to send (Fact.PAYLOAD)."""
        if self.payload is None:
            raise self._unmet(Fact.PAYLOAD)
        return self.payload

    def require_dest_image_id(self) -> str:
        """The destination image's id (Fact.DEST_IMAGE)."""
        if not self.dest_image_id:
            raise self._unmet(Fact.DEST_IMAGE)
        return self.dest_image_id

    def _unmet(self, fact: Fact) -> StepOrderError:
        return StepOrderError(f"step '{self.step}' needs {fact.value}, which no earlier step provided "
                              f"(a pipeline not built by migratio.steps.build_steps)")

    @property
    def log(self) -> logging.LoggerAdapter:
        return JobLog(log, {"job_id": self.job.job_id, "image_id": self.job.image_id, "dest": self.job.dest_site,
                            "step": self.step})

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

    def sending(self, done: int, total: int | None, rate: float | None = None) -> None:
        """`progress` of bytes going to the destination: they also count as sent (once per step:
        a step that starts a second pass, e.g. rsync after a stream, counts what passes the first)."""
        self.progress(done, total, rate)
        if done > self._sent:
            self.metrics.bytes_sent(self.site.id, self.site.type, done - self._sent)
            self._sent = done
        if rate is None:
            elapsed = self.clock() - self._step_start
            rate = done / elapsed if elapsed > 0 else None
        if rate is not None:
            self.metrics.transfer_rate(self.site.id, rate)

    def begin_step(self, name: str) -> None:
        """A step starts: its progress (and what it sent) starts from zero."""
        if self._sent:
            self.metrics.transfer_rate(self.site.id, 0.0)  # the last step sent: nothing is sent now
        self.step, self._throttle, self._sent, self._step_start = name, None, 0, self.clock()

    def remote(self, options: OpenStackOptions) -> "contextlib.AbstractContextManager[RemoteShell]":
        """The job's one SSH connection to the head node, for `with`: opened on first use, kept
        open for every later step and cleanup, closed by `close_remote` when the job ends."""
        if self._shell is None:
            head_node = self.services.head_node
            self._shell = head_node(options, self.job.job_id) if head_node else self.services.remote(options)
        return contextlib.nullcontext(self._shell)

    def close_remote(self) -> None:
        """Close the job's SSH connection (after the cleanups, which may use it)."""
        shell, self._shell, self.destination = self._shell, None, None
        if shell is not None:
            shell.close()

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


class JobLog(logging.LoggerAdapter):
    """Prefixes each message with the job id and the step, as every job log line has, and puts the
    job's fields (job_id, image_id, dest, step) on the record for the JSON logs; the job's other
    records in this thread (status lines, other loggers') carry them too from then on (see migratio.logs)."""

    def log(self, level, msg, *args, **kwargs):
        set_job_fields(**self.extra)
        super().log(level, msg, *args, **kwargs)

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **(kwargs.get("extra") or {})}
        return f"job={self.extra['job_id']} step={self.extra['step']} {msg}", kwargs

"""Logging: stderr (the journal under systemd), log/migratio.log and log/jobs/<job>.log, all redacted."""

import contextlib
import logging
import logging.handlers
import threading
from pathlib import Path
from typing import Callable, Iterator

from migratio import ids
from migratio.errors import InvalidInput
from migratio.redact import RedactingFilter, Redactor

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOBS_SUBDIR = "jobs"

log = logging.getLogger("migratio.logs")


def setup_logging(log_dir: Path | None, level: str, redact: Redactor, stderr: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_migratio", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    if stderr:
        handlers.append(logging.StreamHandler())
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.WatchedFileHandler(log_dir / "migratio.log"))  # survives logrotate
    for handler in handlers:
        handler._migratio = True
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(RedactingFilter(redact))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("paramiko", "urllib3", "botocore", "boto3", "keystoneauth"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def job_log_path(log_dir: Path, job_id: str) -> Path:
    """log/jobs/<job_id>.log; the id is validated before the path is built."""
    return log_dir / JOBS_SUBDIR / f"{ids.site_id(job_id)}.log"


class JobFilter(logging.Filter):
    """Keeps the records of one job: those logged by the thread running it, plus any record
    whose message names it (`job=<id>`, as ctx.log writes), e.g. from a step's helper threads."""

    def __init__(self, job_id: str, thread_id: int):
        super().__init__()
        self.tag, self.thread_id = f"job={job_id} ", thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread_id or self.tag in record.getMessage()


@contextlib.contextmanager
def job_log(log_dir: Path | None, job_id: str, redact: Callable[[str], str]) -> Iterator[Path | None]:
    """Copy the job's log records into log/jobs/<job_id>.log while the block runs.

    Attached by the work-horse for the duration of one job; a retried job appends to the same
    file, so one file tells the whole story. Redacted like every other handler. If the file
    cannot be opened, the job still runs (its records stay in migratio.log).
    """
    handler = _open_job_handler(log_dir, job_id, redact)
    if handler is None:
        yield None
        return
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield Path(handler.baseFilename)
    finally:
        root.removeHandler(handler)
        handler.close()


def _open_job_handler(log_dir: Path | None, job_id: str, redact) -> logging.Handler | None:
    if log_dir is None:
        return None
    try:
        path = job_log_path(log_dir, job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except (OSError, InvalidInput) as exc:
        log.warning("job=%s no per-job log file: %s", job_id, exc)
        return None
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(JobFilter(job_id, threading.get_ident()))
    handler.addFilter(RedactingFilter(redact))
    return handler

"""Logging: stderr (the journal under systemd), log/migratio.log and log/jobs/<job>.log, all redacted,
as text lines or (`log_format: json`) one JSON object per line carrying the job's fields."""

import contextlib
import json
import logging
import logging.handlers
import threading
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Literal

from migratio import ids
from migratio.errors import InvalidInput
from migratio.redact import RedactingFilter, Redactor

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOBS_SUBDIR = "jobs"
LogFormat = Literal["text", "json"]
FIELDS = ("job_id", "image_id", "dest", "step")  # a job's fields: keys of every JSON record

log = logging.getLogger("migratio.logs")

# The fields of the job this context runs (set by job_log, the step added as each step logs its
# start); None outside a job. Threads start with an empty context: a step's helper threads log
# through the job's LoggerAdapter, whose `extra` carries the same fields.
_job_fields: ContextVar[dict[str, str] | None] = ContextVar("migratio_job_fields", default=None)


def set_job_fields(**fields: str | None) -> None:
    """Inside a job, this thread's records carry `fields` from now on (e.g. the step that runs)."""
    current = _job_fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if k in FIELDS and v is not None})


class JobFields(logging.Filter):
    """Puts the job's fields on each record that does not carry them already (None outside a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _job_fields.get() or {}
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, current.get(name))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the job's fields
    and the traceback if any. Handlers redact message and traceback before formatting (see
    RedactingFilter); the job's fields are redacted here."""

    def __init__(self, redact: Callable[[str], str]):
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for name in FIELDS:
            value = getattr(record, name, None)
            entry[name] = None if value is None else self.redact(str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)  # ASCII: \u escapes survive any stderr encoding


def _formatter(fmt: LogFormat, redact: Callable[[str], str]) -> logging.Formatter:
    return JsonFormatter(redact) if fmt == "json" else logging.Formatter(FORMAT)


def setup_logging(log_dir: Path | None, level: str, redact: Redactor, stderr: bool = True,
                  fmt: LogFormat = "text") -> None:
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
        handler.setFormatter(_formatter(fmt, redact))
        handler.addFilter(JobFields())
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
def job_log(log_dir: Path | None, job_id: str, redact: Callable[[str], str], fmt: LogFormat = "text",
            image_id: object = None, dest: object = None) -> Iterator[Path | None]:
    """Copy the job's log records into log/jobs/<job_id>.log while the block runs.

    Attached by the work-horse for the duration of one job; a retried job appends to the same
    file, so one file tells the whole story. Redacted like every other handler. If the file
    cannot be opened, the job still runs (its records stay in migratio.log). The records of this
    context carry the job's fields meanwhile (image_id and dest only if they are valid ids).
    """
    token = _job_fields.set(_start_fields(job_id, image_id, dest))
    handler = _open_job_handler(log_dir, job_id, redact, fmt)
    root = logging.getLogger()
    if handler is not None:
        root.addHandler(handler)
    try:
        yield None if handler is None else Path(handler.baseFilename)
    finally:
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
        _job_fields.reset(token)


def _start_fields(job_id: str, image_id: object, dest: object) -> dict[str, str]:
    fields = {"job_id": job_id}
    with contextlib.suppress(InvalidInput):
        fields["image_id"] = ids.image_id(image_id)
    with contextlib.suppress(InvalidInput):
        fields["dest"] = ids.site_id(dest)
    return fields


def _open_job_handler(log_dir: Path | None, job_id: str, redact, fmt: LogFormat) -> logging.Handler | None:
    if log_dir is None:
        return None
    try:
        path = job_log_path(log_dir, job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except (OSError, InvalidInput) as exc:
        log.warning("job=%s no per-job log file: %s", job_id, exc)
        return None
    handler.setFormatter(_formatter(fmt, redact))
    handler.addFilter(JobFilter(job_id, threading.get_ident()))
    handler.addFilter(JobFields())
    handler.addFilter(RedactingFilter(redact))
    return handler

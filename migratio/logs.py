"""Logging: stderr (the journal under systemd) and log/migratio.log, both redacted."""

import logging
import logging.handlers
from pathlib import Path

from .redact import RedactingFilter, Redactor

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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

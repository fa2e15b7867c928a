"""Per-job temp directories under work_dir, and removal of those a crashed worker left behind."""

import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable

from migratio import ids
from migratio.errors import InvalidInput

log = logging.getLogger("migratio.workdirs")


def job_dir(work_dir: Path, job_id: str) -> Path:
    return work_dir / ids.site_id(job_id)


def remove_stale(work_dir: Path, running: Iterable[str] | Callable[[], Iterable[str]]) -> list[Path]:
    """Remove job dirs whose job is not running (work_dir belongs to one site's workers).

    `running` may be a callable: it is then asked after the directory was listed, so a job that
    starts meanwhile (it is registered as started before it makes its dir) is never removed.
    """
    if not work_dir.is_dir():
        return []
    candidates = [p for p in sorted(work_dir.iterdir())
                  if p.is_dir() and not p.is_symlink() and _is_job_dir(p.name)]
    if not candidates:
        return []
    keep = set(running() if callable(running) else running)
    removed = []
    for path in candidates:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed stale temp dir %s (its job is no longer running)", path)
            removed.append(path)
    return removed


def _is_job_dir(name: str) -> bool:
    try:
        ids.site_id(name)
    except InvalidInput:
        return False
    return True

"""How `migratio status` and `migratio migrate --wait` show jobs: one line each, progress, log file."""

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click
from rq.job import Job

from migratio.errors import MigratioError
from migratio.logs import job_log_path
from migratio.queue.views import JobView, view
from migratio.units import format_size

ENDED = ("finished", "failed", "canceled", "stopped")
BAR_WIDTH = 24


def as_dict(v: JobView, log_dir: Path) -> dict[str, object]:
    """The job for `status --json`: its view, percent, ETA and log file."""
    log = job_log(log_dir, v.id)
    return {**asdict(v), "percent": v.percent, "eta": v.eta, "log": str(log) if log else None}


def print_views(views: list[JobView], queue_name: str, tty: bool, log_dir: Path, detail: bool = False) -> None:
    """One line per job; a failed job (or the one asked for) also gets its retry hint and log file."""
    if not views:
        click.echo(f"no jobs on {queue_name}")
    for v in views:
        click.echo(job_line(v, tty, elapsed=True))
        if v.state == "failed":
            click.echo(f"    retry: migratio retry {v.id}")
        log = job_log(log_dir, v.id) if v.state == "failed" or detail else None
        if log:
            click.echo(f"    log: {log}")


def job_log(log_dir: Path, job_id: str) -> Path | None:
    """log/jobs/<job_id>.log (the commands it ran, their exit codes and stderr), if this host has it."""
    try:
        path = job_log_path(log_dir, job_id)
    except MigratioError:
        return None
    return path if path.is_file() else None


def job_line(v: JobView, tty: bool = False, elapsed: bool = False) -> str:
    """`<id>  <state> <image> -> <dest>`, then progress, the wait reason, the error or the result."""
    text = f"{v.id}  {v.state:<12} {v.image_id} -> {v.dest}"
    if v.state == "started":
        text += "  " + progress(v, tty, elapsed)
    elif v.state == "rate_limited":
        text += "  waiting: max_concurrent jobs to this site are already running"
    if v.error and v.state in ("failed", "scheduled"):
        text += f"  reason: {v.error}"
        if v.state == "scheduled":
            text += " (will retry)"
    if v.result:
        text += f"  result: {v.result.get('dest_image_id')}"
    return text


def progress(v: JobView, tty: bool, elapsed: bool) -> str:
    parts = [f"step={v.step or '-'}"]
    if v.percent is not None:
        parts.append(bar(v.percent) if tty else f"{v.percent}%")
    if v.bytes_done is not None:
        parts.append(format_size(v.bytes_done) + (f"/{format_size(v.bytes_total)}" if v.bytes_total else ""))
    if v.rate:
        parts.append(f"{format_size(v.rate)}/s")
    if v.eta is not None:
        parts.append(f"ETA {duration(v.eta)}")
    if elapsed and v.started_at:
        parts.append(f"running {duration(_elapsed(v.started_at))}")
    return " ".join(parts)


def bar(percent: int) -> str:
    filled = BAR_WIDTH * percent // 100
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {percent:3d}%"


def duration(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _elapsed(since: datetime) -> float:
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - since).total_seconds())


def wait(job: Job) -> int:
    """Print the job's line each time it changes until it ends; 0 if it finished, else 1."""
    last = None
    while True:
        job.refresh()
        v = view(job)
        text = job_line(v)
        if text != last:
            click.echo(text)
            last = text
        if v.state in ENDED:
            return 0 if v.state == "finished" else 1
        time.sleep(1)

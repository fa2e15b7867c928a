"""How `migratio status` and `migratio migrate --wait` show jobs as plain lines: one line each, progress,
log file (on a terminal, `cli.terminal` draws the running ones as progress bars)."""

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


def as_dict(v: JobView, log_dir: Path) -> dict[str, object]:
    """The job for `status --json`: its view, percent, ETA and log file."""
    log = job_log(log_dir, v.id)
    return {**asdict(v), "percent": v.percent, "eta": v.eta, "log": str(log) if log else None}


def print_views(views: list[JobView], queue_name: str, log_dir: Path, detail: bool = False) -> None:
    """One line per job; a failed job (or the one asked for) also gets its retry hint and log file."""
    if not views:
        click.echo(no_jobs(queue_name))
    for v in views:
        click.echo(job_line(v, elapsed=True))
        for line in hints(v, log_dir, detail):
            click.echo(line)


def no_jobs(queue_name: str) -> str:
    return f"no jobs on {queue_name}"


def hints(v: JobView, log_dir: Path, detail: bool) -> list[str]:
    """The lines under a job's: the retry command of a failed job, its log file (or the one asked for's)."""
    lines = [f"    retry: migratio retry {v.id}"] if v.state == "failed" else []
    log = job_log(log_dir, v.id) if v.state == "failed" or detail else None
    return (lines + [f"    log: {log}"]) if log else lines


def job_log(log_dir: Path, job_id: str) -> Path | None:
    """log/jobs/<job_id>.log (the commands it ran, their exit codes and stderr), if this host has it."""
    try:
        path = job_log_path(log_dir, job_id)
    except MigratioError:
        return None
    return path if path.is_file() else None


def job_line(v: JobView, elapsed: bool = False) -> str:
    """`<id>  <state> <image> -> <dest>`, then progress, the wait reason, the error or the result."""
    text = head(v)
    if v.state == "started":
        text += "  " + progress(v, elapsed)
    elif v.state == "rate_limited":
        text += "  waiting: max_concurrent jobs to this site are already running"
    if v.error and v.state in ("failed", "scheduled"):
        text += f"  reason: {v.error}"
        if v.state == "scheduled":
            text += " (will retry)"
    if v.result:
        text += f"  result: {v.result.get('dest_image_id')}"
    return text


def head(v: JobView) -> str:
    """What every job line starts with: `<id>  <state> <image> -> <dest>`."""
    return f"{v.id}  {v.state:<12} {v.image_id} -> {v.dest}"


def progress(v: JobView, elapsed: bool) -> str:
    """`step=<step> <percent>% <bytes> <rate> ETA <eta> running <time>`, each part when known."""
    shown = figures(v)
    parts = [f"step={v.step or '-'}", "" if v.percent is None else f"{v.percent}%", shown["bytes"], shown["rate"],
             shown["eta"], shown["running"] if elapsed else ""]
    return " ".join(p for p in parts if p)


def figures(v: JobView) -> dict[str, str]:
    """A running job's bytes, rate, ETA and run time as it recorded them ('' when unknown)."""
    done, total = v.bytes_done, v.bytes_total
    return {"bytes": "" if done is None else format_size(done) + (f"/{format_size(total)}" if total else ""),
            "rate": f"{format_size(v.rate)}/s" if v.rate else "",
            "eta": "" if v.eta is None else f"ETA {duration(v.eta)}",
            "running": f"running {duration(_elapsed(v.started_at))}" if v.started_at else ""}


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
            return exit_code(v)
        time.sleep(1)


def exit_code(v: JobView) -> int:
    """What `migrate --wait` exits with once the job ended: 0 if it finished, else 1."""
    return 0 if v.state == "finished" else 1

"""How `status`, `status --watch` and `migrate --wait` show jobs when stdout is a terminal: each
running job as its line and a rich progress bar with the bytes, rate and ETA the worker records,
every other job as its plain line (`render` prints all of it as lines when stdout is not a terminal)."""

import time
from pathlib import Path
from typing import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.text import Text
from rq.job import Job

from migratio.cli import render
from migratio.queue.views import JobView, view

REFRESH = 1.0  # seconds between two reads of the job by `migrate --wait`
FIGURES = ("bytes", "rate", "eta", "running")  # render.figures, in the order they follow the bar


def screen(views: list[JobView], queue_name: str, log_dir: Path, detail: bool = False) -> RenderableType:
    """Every job in order (a running one with its bar), each followed by its hints."""
    if not views:
        return Text(render.no_jobs(queue_name))
    parts: list[RenderableType] = []
    for v in views:
        parts.append(job_bar(v) if v.state == "started" else Text(render.job_line(v, elapsed=True)))
        parts.extend(Text(line) for line in render.hints(v, log_dir, detail))
    return Group(*parts)


def job_bar(v: JobView) -> RenderableType:
    """A running job: the head of its line with its step, under it the bar (as wide as the terminal
    allows; it pulses while the step has not measured its bytes) and the job's figures."""
    plain = {"markup": False}  # sizes and times are shown as they are, never read as rich markup
    progress = Progress(TextColumn("   "), BarColumn(bar_width=None), TaskProgressColumn(),
                        *(TextColumn(f"{{task.fields[{name}]}}", **plain) for name in FIGURES),
                        expand=True, auto_refresh=False)
    progress.add_task("", total=v.bytes_total, completed=v.bytes_done or 0, **render.figures(v))
    return Group(Text(f"{render.head(v)}  step={v.step or '-'}"), progress)


def show(fetch: Callable[[], list[JobView]], queue_name: str, log_dir: Path, detail: bool,
         interval: float | None = None, rounds: int | None = None) -> None:
    """`migratio status` on a terminal: the jobs once, or (with an interval) redrawn in place until
    interrupted or `rounds` refreshes are done."""
    console = Console()
    if interval is None:
        console.print(screen(fetch(), queue_name, log_dir, detail))
        return
    done = 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(screen(fetch(), queue_name, log_dir, detail), refresh=True)
            done += 1
            if rounds is not None and done >= rounds:
                return
            time.sleep(interval)


def follow(job: Job) -> int:
    """`migrate --wait` on a terminal: the job's bar (or its line while it does not run) redrawn in
    place until it ends, then its final line; 0 if it finished, else 1."""
    console = Console()
    with Live(console=console, transient=True, auto_refresh=False) as live:
        while True:
            job.refresh()
            v = view(job)
            if v.state in render.ENDED:
                break
            live.update(job_bar(v) if v.state == "started" else Text(render.job_line(v)), refresh=True)
            time.sleep(REFRESH)
    console.print(Text(render.job_line(v)))
    return render.exit_code(v)

"""The `migratio` command line."""

import json
import os
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone

import click
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from migratio import ids
from migratio.conf import sites
from migratio.conf.config import Config, config_path, load_config
from migratio.errors import ConfigError, InvalidInput, MigratioError
from migratio.logs import job_log_path, setup_logging
from migratio.queue import views as job_views
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.redact import Redactor
from migratio.units import format_size, parse_size

EX_CONFIG = 78  # sysexits.h; the systemd unit does not restart a worker that exits with it
ENDED = ("finished", "failed", "canceled", "stopped")
BAR_WIDTH = 24


class Cli(click.Group):
    """Errors are one line on stderr and exit 1; --debug shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MigratioError as exc:
            if ctx.meta.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


class State:
    def __init__(self, config_option: str | None, debug: bool):
        self.config_option, self.debug = config_option, debug
        self.redact = Redactor.from_environ(os.environ)

    @property
    def config_file(self):
        return config_path(self.config_option, os.environ)

    def config(self, name: str | None = None) -> Config:
        config = load_config(self.config_file)
        if name:
            config = replace(config, name=ids.site_id(name))
        return config

    def redis(self, config: Config):
        from migratio.queue.worker import connect

        return connect(config, self.redact)


@click.group(cls=Cli)
@click.option("--config", "config_option", metavar="PATH",
              help="config.yml (default: $MIGRATIO_CONFIG, then ./config.yml)")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, config_option: str | None, debug: bool) -> None:
    """migratio: migrate Glance images from this site to other sites."""
    ctx.meta["debug"] = debug
    ctx.obj = State(config_option, debug)


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--name", metavar="SITE", help="Override config `name` (consume migration_SITE).")
@click.pass_obj
def worker(state: State, burst: bool, name: str | None) -> None:
    """Run a worker on this site's migration queue.

    Exit codes: 0 after a warm shutdown (SIGTERM: the running job ends first), 78 on a
    configuration error (systemd does not restart it), 1 on other errors (e.g. Redis down).
    """
    from migratio.queue.worker import RedisTooOld, build_app, run_worker

    try:
        config = state.config(name)
    except (ConfigError, InvalidInput) as exc:
        if state.debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(EX_CONFIG)
    setup_logging(config.log_dir, "DEBUG" if state.debug else config.log_level, state.redact)
    try:
        client = state.redis(config)
    except RedisTooOld as exc:  # a deployment problem: restarting cannot help
        click.echo(f"error: {exc}", err=True)
        sys.exit(EX_CONFIG)
    app = build_app(config, client, redact=state.redact)
    run_worker(app, burst=burst)


@main.command()
@click.argument("image_uuid")
@click.argument("dest_site")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@click.option("--feedback", is_flag=True,
              help="Send its status lines to Atmosphere too (only for images Atmosphere knows).")
@click.pass_obj
def migrate(state: State, image_uuid: str, dest_site: str, wait: bool, feedback: bool) -> None:
    """Enqueue the migration of IMAGE_UUID to DEST_SITE."""
    config = state.config()
    image_id = ids.image_id(image_uuid)
    site = sites.load_site(config.sites_dir, dest_site)  # an unknown or broken site fails here, not later
    job = enqueue_migration(migration_queue(config, state.redis(config)), config, image_id, dest_site, site=site,
                            feedback=feedback)
    click.echo(f"enqueued job {job.id}: migrate {image_id} to {dest_site}")
    if wait:
        sys.exit(_wait(job))


@main.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh until interrupted (Ctrl-C).")
@click.option("--interval", default=2.0, show_default=True, metavar="SECONDS", help="Refresh period of --watch.")
@click.option("--rounds", type=int, default=None, hidden=True, help="Stop --watch after N refreshes.")
@click.pass_obj
def status(state: State, job_id: str | None, as_json: bool, watch: bool, interval: float,
           rounds: int | None) -> None:
    """List this site's jobs (or show one): running ones with step, progress, rate and ETA."""
    config = state.config()
    queue = migration_queue(config, state.redis(config))
    tty = sys.stdout.isatty() and not as_json
    done = 0
    try:
        while True:
            views = [job_views.get_view(queue, job_id)] if job_id else job_views.list_views(queue)
            if watch and tty:
                click.clear()
            if as_json:
                click.echo(json.dumps([_as_dict(v, config.log_dir) for v in views], default=str, indent=2))
            else:
                _print_views(views, queue.name, tty, config.log_dir, detail=bool(job_id))
            done += 1
            if not watch or (rounds is not None and done >= rounds):
                return
            if not tty and not as_json:
                click.echo("")
            time.sleep(interval)
    except KeyboardInterrupt:  # the way out of --watch
        return


@main.command()
@click.argument("job_id")
@click.pass_obj
def retry(state: State, job_id: str) -> None:
    """Requeue a failed job (after fixing what made it fail)."""
    config = state.config()
    redis = state.redis(config)
    try:
        job = Job.fetch(job_id, connection=redis)
    except (NoSuchJobError, ValueError):
        raise InvalidInput(f"no job {job_id!r} (failed jobs are kept only for failure_ttl)") from None
    current = job_views.status_name(job.get_status())
    if current != "failed":
        raise InvalidInput(f"job {job_id} is {current}, not failed: only failed jobs can be retried")
    job.meta.update(state="queued", error=None, step=None, bytes_done=None, bytes_total=None, rate=None,
                    retried_by_operator=_now())
    job.retries_left = config.retries or None  # a fresh round of automatic retries
    try:
        job = job.requeue()
    except InvalidJobOperation:
        raise InvalidInput(f"job {job_id} is not in the failed registry of {job.origin}") from None
    limited = job_views.status_name(job.get_status()) == "rate_limited"
    waiting = " (waiting for a slot: the site's max_concurrent is reached)" if limited else ""
    click.echo(f"requeued job {job.id}: {job.description}{waiting}")


@main.command(name="sites")
@click.pass_obj
def sites_command(state: State) -> None:
    """List destination site confs and whether each loads."""
    config = state.config()
    names = sites.list_sites(config.sites_dir)
    if not names:
        click.echo(f"no site confs in {config.sites_dir}")
    bad = 0
    for name in names:
        try:
            site = sites.load_site(config.sites_dir, name)
            click.echo(f"{name}: ok ({site.type})")
        except MigratioError as exc:
            bad += 1
            click.echo(f"{name}: ERROR {exc}")
    sys.exit(1 if bad else 0)


@main.command()
@click.argument("site_ids", nargs=-1, metavar="[SITE...]")
@click.option("--min-free", default="10G", show_default=True, metavar="SIZE",
              help="Free space the staging dir of an OpenStack destination needs (e.g. 500M, 20G).")
@click.pass_obj
def check(state: State, site_ids: tuple[str, ...], min_free: str) -> None:
    """Preflight: is this site and each destination (default: all) set up to migrate?"""
    from migratio.check import probes as checks

    results = checks.run_all(checks.Inputs(config_file=state.config_file, environ=dict(os.environ),
                                           site_ids=list(site_ids), min_free=parse_size(min_free),
                                           redact=state.redact))
    for result in results:
        click.echo(result.line())
    counts = {status: sum(1 for r in results if r.status == status) for status in ("PASS", "FAIL", "SKIP")}
    failed = counts["FAIL"]
    click.echo(f"{counts['PASS']} passed, {failed} failed" + (f", {counts['SKIP']} not checked" if counts["SKIP"] else ""))
    sys.exit(1 if failed else 0)


# -- rendering

def _as_dict(v: job_views.JobView, log_dir) -> dict:
    log = _job_log(log_dir, v.id)
    return {**asdict(v), "percent": v.percent, "eta": v.eta, "log": str(log) if log else None}


def _print_views(views: list[job_views.JobView], queue_name: str, tty: bool, log_dir, detail: bool = False) -> None:
    """One line per job; a failed job (or the one asked for) also gets its retry hint and log file."""
    if not views:
        click.echo(f"no jobs on {queue_name}")
    for v in views:
        click.echo(_line(v, tty, elapsed=True))
        if v.state == "failed":
            click.echo(f"    retry: migratio retry {v.id}")
        log = _job_log(log_dir, v.id) if v.state == "failed" or detail else None
        if log:
            click.echo(f"    log: {log}")


def _job_log(log_dir, job_id: str):
    """log/jobs/<job_id>.log (the commands it ran, their exit codes and stderr), if this host has it."""
    try:
        path = job_log_path(log_dir, job_id)
    except MigratioError:
        return None
    return path if path.is_file() else None


def _line(v: job_views.JobView, tty: bool = False, elapsed: bool = False) -> str:
    text = f"{v.id}  {v.state:<12} {v.image_id} -> {v.dest}"
    if v.state == "started":
        text += "  " + _progress(v, tty, elapsed)
    elif v.state == "rate_limited":
        text += "  waiting: max_concurrent jobs to this site are already running"
    if v.error and v.state in ("failed", "scheduled"):
        text += f"  reason: {v.error}"
        if v.state == "scheduled":
            text += " (will retry)"
    if v.result:
        text += f"  result: {v.result.get('dest_image_id')}"
    return text


def _progress(v: job_views.JobView, tty: bool, elapsed: bool) -> str:
    parts = [f"step={v.step or '-'}"]
    if v.percent is not None:
        parts.append(_bar(v.percent) if tty else f"{v.percent}%")
    if v.bytes_done is not None:
        parts.append(format_size(v.bytes_done) + (f"/{format_size(v.bytes_total)}" if v.bytes_total else ""))
    if v.rate:
        parts.append(f"{format_size(v.rate)}/s")
    if v.eta is not None:
        parts.append(f"ETA {_duration(v.eta)}")
    if elapsed and v.started_at:
        parts.append(f"running {_duration(_elapsed(v.started_at))}")
    return " ".join(parts)


def _bar(percent: int) -> str:
    filled = BAR_WIDTH * percent // 100
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {percent:3d}%"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _elapsed(since: datetime) -> float:
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - since).total_seconds())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _wait(job) -> int:
    last = None
    while True:
        job.refresh()
        v = job_views.view(job)
        line = _line(v)
        if line != last:
            click.echo(line)
            last = line
        if v.state in ENDED:
            return 0 if v.state == "finished" else 1
        time.sleep(1)


if __name__ == "__main__":
    main()

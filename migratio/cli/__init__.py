"""The `migratio` command line: worker, migrate, status, retry, sites, check (rendering in `render`)."""

import json
import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import click
from redis import Redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from migratio import ids
from migratio.cli import render, terminal
from migratio.conf import sites
from migratio.conf.config import Config, config_path, load_config
from migratio.errors import ConfigError, InvalidInput, MigratioError
from migratio.logs import setup_logging
from migratio.queue import views as job_views
from migratio.queue.enqueue import enqueue_validated, migration_queue
from migratio.redact import Redactor
from migratio.units import parse_size

EX_CONFIG = 78  # sysexits.h; the systemd unit does not restart a worker that exits with it


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
    """What every command gets: the --config/--debug options and the redactor of this process's secrets."""

    def __init__(self, config_option: str | None, debug: bool):
        self.config_option, self.debug = config_option, debug
        self.redact = Redactor.from_environ(os.environ)

    @property
    def config_file(self) -> Path:
        return config_path(self.config_option, os.environ)

    def config(self, name: str | None = None) -> Config:
        config = load_config(self.config_file)
        if name:
            config = replace(config, name=ids.site_id(name))
        return config

    def redis(self, config: Config) -> Redis:
        from migratio.queue.connections import connect

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
    from migratio.queue.connections import RedisTooOld
    from migratio.queue.worker import build_app, run_worker

    try:
        config = state.config(name)
    except (ConfigError, InvalidInput) as exc:
        if state.debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(EX_CONFIG)
    setup_logging(config.log_dir, "DEBUG" if state.debug else config.log_level, state.redact, fmt=config.log_format)
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
    job = enqueue_validated(migration_queue(config, state.redis(config)), config, image_id, site.id, site,
                            feedback=feedback)
    click.echo(f"enqueued job {job.id}: migrate {image_id} to {dest_site}")
    if wait:
        sys.exit(terminal.follow(job) if sys.stdout.isatty() else render.wait(job))


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

    def fetch() -> list[job_views.JobView]:
        return [job_views.get_view(queue, job_id)] if job_id else job_views.list_views(queue)

    done = 0
    try:
        if sys.stdout.isatty() and not as_json:  # progress bars, redrawn in place by --watch
            return terminal.show(fetch, queue.name, config.log_dir, bool(job_id), interval if watch else None, rounds)
        while True:
            views = fetch()
            if as_json:
                click.echo(json.dumps([render.as_dict(v, config.log_dir) for v in views], default=str, indent=2))
            else:
                render.print_views(views, queue.name, config.log_dir, detail=bool(job_id))
            done += 1
            if not watch or (rounds is not None and done >= rounds):
                return
            if not as_json:
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
    """List destination site confs and whether each loads (with its pipeline)."""
    from migratio.steps import build_steps

    config = state.config()
    names = sites.list_sites(config.sites_dir)
    if not names:
        click.echo(f"no site confs in {config.sites_dir}")
    bad = 0
    for name in names:
        try:
            site = sites.load_site(config.sites_dir, name)
            build_steps(site)
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
    from migratio.check.probe import summary
    from migratio.check.run import Inputs, run_all

    results = run_all(Inputs(config_file=state.config_file, environ=dict(os.environ), site_ids=list(site_ids),
                             min_free=parse_size(min_free), redact=state.redact))
    for result in results:
        click.echo(result.line())
    click.echo(summary(results))
    sys.exit(0 if all(r.ok for r in results) else 1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

"""The `migratio` command line."""

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click

from . import ids, jobs, sites
from .config import Config, config_path, load_config
from .errors import MigratioError
from .logs import setup_logging
from .queue import enqueue_migration, migration_queue
from .redact import Redactor


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

    def config(self, name: str | None = None) -> Config:
        config = load_config(config_path(self.config_option, os.environ))
        if name:
            from dataclasses import replace

            config = replace(config, name=ids.site_id(name))
        return config

    def redis(self, config: Config):
        from .worker import connect

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
    """Run a worker on this site's migration queue."""
    from .worker import build_app, run_worker

    config = state.config(name)
    setup_logging(config.log_dir, "DEBUG" if state.debug else config.log_level, state.redact)
    app = build_app(config, state.redis(config))
    run_worker(app, burst=burst)


@main.command()
@click.argument("image_uuid")
@click.argument("dest_site")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@click.pass_obj
def migrate(state: State, image_uuid: str, dest_site: str, wait: bool) -> None:
    """Enqueue the migration of IMAGE_UUID to DEST_SITE."""
    config = state.config()
    image_id = ids.image_id(image_uuid)
    sites.load_site(config.sites_dir, dest_site)  # an unknown or broken site fails here, not later
    job = enqueue_migration(migration_queue(config, state.redis(config)), config, image_id, dest_site)
    click.echo(f"enqueued job {job.id}: migrate {image_id} to {dest_site}")
    if wait:
        sys.exit(_wait(job))


@main.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(state: State, job_id: str | None, as_json: bool) -> None:
    """List this site's jobs (or show one)."""
    config = state.config()
    queue = migration_queue(config, state.redis(config))
    views = [jobs.get_view(queue, job_id)] if job_id else jobs.list_views(queue)
    if as_json:
        click.echo(json.dumps([asdict(v) for v in views], default=str, indent=2))
        return
    if not views:
        click.echo(f"no jobs on {queue.name}")
    for v in views:
        click.echo(_line(v))


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


def _line(v: jobs.JobView) -> str:
    text = f"{v.id}  {v.state:<9} {v.image_id} -> {v.dest}"
    if v.state == "started" and v.step:
        pct = f" {v.percent}%" if v.percent is not None else ""
        text += f"  step={v.step}{pct}"
    if v.error and v.state in ("failed", "scheduled"):
        text += f"  reason: {v.error}"
    if v.result:
        text += f"  result: {v.result.get('dest_image_id')}"
    return text


def _wait(job) -> int:
    last = None
    while True:
        job.refresh()
        v = jobs.view(job)
        line = _line(v)
        if line != last:
            click.echo(line)
            last = line
        if v.state in ("finished", "failed", "canceled", "stopped"):
            return 0 if v.state == "finished" else 1
        time.sleep(1)


if __name__ == "__main__":
    main()

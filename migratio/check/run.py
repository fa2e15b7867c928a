"""`migratio check`: which probes run, in which order, against which clients.

The config first (nothing else can run without it), then this host, this site's Glance, and
each destination by its type. The clients are the real ones (Redis, Glance, SSH, AWS), each
replaceable in `Inputs`.
"""

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from redis import Redis

from migratio.check.aws import run_aws
from migratio.check.local import ConnectRedis, check_config, run_local
from migratio.check.openstack import run_openstack, run_source
from migratio.check.probe import Result, Runner
from migratio.check.staging import Leftovers
from migratio.conf import sites
from migratio.conf.config import Config
from migratio.pipeline.services import Services, default_services
from migratio.queue.connections import connect
from migratio.queue.keys import lock_key
from migratio.redact import Redactor
from migratio.steps import build_steps
from migratio.units import GiB


@dataclass
class Inputs:
    """What the checks run against; tests replace any of the factories."""

    config_file: Path
    environ: Mapping[str, str]
    site_ids: list[str] = field(default_factory=list)  # empty: every site conf
    min_free: int = 10 * GiB  # free space a staging dir needs
    redact: Redactor = field(default_factory=Redactor)
    connect_redis: ConnectRedis = connect
    services: Callable[[Config, Mapping[str, str]], Services] = default_services


def run_all(inputs: Inputs) -> list[Result]:
    runner = Runner(inputs.redact)
    config = runner.value("config", lambda: check_config(inputs.config_file),
                          f"edit {inputs.config_file} (see config.yml.example)")
    if config is None:
        return runner.results
    run_local(runner, config, inputs.environ, inputs.connect_redis, inputs.redact)
    services = inputs.services(config, inputs.environ)
    run_source(runner, config, services)
    site_ids = inputs.site_ids or sites.list_sites(config.sites_dir)
    redis = functools.cache(lambda: inputs.connect_redis(config, inputs.redact))  # (asked for leftovers)
    for site_id in site_ids:
        run_site(runner, config, site_id, services, inputs.min_free, redis)
    if not site_ids:
        runner.fail("sites", f"no site confs in {config.sites_dir}",
                    "add one <site_id>.conf per destination (see config/)")
    return runner.results


def run_site(runner: Runner, config: Config, site_id: str, services: Services, min_free: int,
             redis: Callable[[], Redis] | None = None) -> None:
    """The site's probes; with `redis`, an OpenStack staging dir's stale files are looked for too."""
    site = runner.value(f"{site_id}: conf", lambda: check_site_conf(config, site_id),
                        f"fix {config.sites_dir}/{site_id}.conf")
    if site is None:
        return
    if site.type == "aws":
        run_aws(runner, site.id, site.aws, services)
    else:
        leftovers = None if redis is None else Leftovers(config.name, config.lock_ttl, _held(redis, config, site.id))
        run_openstack(runner, site.id, site.openstack, services, min_free, leftovers, site.limits.bandwidth_limit)


def _held(redis: Callable[[], Redis], config: Config, site_id: str) -> Callable[[str], bool]:
    """image id -> whether a job holds the lock of that image to `site_id`."""
    return lambda image_id: bool(redis().exists(lock_key(config.namespace, image_id, site_id)))


def check_site_conf(config: Config, site_id: str) -> tuple[sites.Site, str]:
    site = sites.load_site(config.sites_dir, site_id)
    build_steps(site)  # its pipeline too, as a job builds it: the order, and what each step needs of the conf
    return site, f"{site.path} loads ({site.type})"

"""The clients steps talk to, built from config and passed in (tests pass their own)."""

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from migratio.conf.config import Config


@dataclass(frozen=True)
class Services:
    source_glance: Callable[[], Any]  # -> migratio.glance.Glance of this site
    glance: Callable[[str | None], Any]  # clouds.yaml cloud name -> Glance (destinations, via: api)
    remote: Callable[[Any], Any]  # OpenStackOptions -> migratio.remote.RemoteShell
    aws: Callable[[Any], Any]  # AwsOptions -> migratio.aws_clients.AwsClients
    nova: Callable[[str | None], Any]  # clouds.yaml cloud name -> migratio.nova.Nova


def default_services(config: Config, environ: Mapping[str, str] | None = None) -> Services:
    env = dict(os.environ if environ is None else environ)

    def glance(cloud: str | None):
        from migratio.openstack import auth
        from migratio.openstack import glance as glance_mod

        return glance_mod.Glance(auth.session(cloud, config.clouds_file, env))

    def remote(site):
        from migratio.openstack import ssh as remote_mod

        return remote_mod.RemoteShell.connect(site)

    def aws(site):
        from migratio.aws import clients

        return clients.AwsClients.connect(site)

    def nova(cloud: str | None):
        from migratio.openstack import auth
        from migratio.openstack import nova as nova_mod

        return nova_mod.Nova(auth.session(cloud, config.clouds_file, env))

    return Services(lambda: glance(config.cloud), glance, remote, aws, nova)


def preload() -> None:
    """Import the clients every OpenStack job uses, once, in the worker process.

    RQ forks a work-horse per job: what the worker imported, the horse has for free; what it
    imports itself (glanceclient, keystoneauth, paramiko: about 1 s) it pays on every job.
    """
    from migratio.openstack import auth, glance, headnode, ssh, stream  # noqa: F401

"""The clients steps talk to, built from config and passed in (tests pass their own)."""

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .config import Config


@dataclass(frozen=True)
class Services:
    source_glance: Callable[[], Any]  # -> migratio.glance.Glance of this site
    glance: Callable[[str | None], Any]  # clouds.yaml cloud name -> Glance (destinations, via: api)
    remote: Callable[[Any], Any]  # OpenStackSite -> migratio.remote.RemoteShell
    aws: Callable[[Any], Any]  # AwsSite -> migratio.aws_clients.AwsClients
    nova: Callable[[str | None], Any]  # clouds.yaml cloud name -> migratio.nova.Nova


def default_services(config: Config, environ: Mapping[str, str] | None = None) -> Services:
    env = dict(os.environ if environ is None else environ)

    def glance(cloud: str | None):
        from . import glance as glance_mod, openstack_auth

        return glance_mod.Glance(openstack_auth.session(cloud, config.clouds_file, env))

    def remote(site):
        from . import remote as remote_mod

        return remote_mod.RemoteShell.connect(site)

    def aws(site):
        from . import aws_clients

        return aws_clients.AwsClients.connect(site)

    def nova(cloud: str | None):
        from . import nova as nova_mod, openstack_auth

        return nova_mod.Nova(openstack_auth.session(cloud, config.clouds_file, env))

    return Services(lambda: glance(config.cloud), glance, remote, aws, nova)


def preload() -> None:
    """Import the clients every OpenStack job uses, once, in the worker process.

    RQ forks a work-horse per job: what the worker imported, the horse has for free; what it
    imports itself (glanceclient, keystoneauth, paramiko: about 1 s) it pays on every job.
    """
    from . import glance, glance_cli, openstack_auth, remote, stream  # noqa: F401

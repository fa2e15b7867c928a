"""The clients steps talk to, built from config and passed in (tests pass their own)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from migratio.conf.config import Config
from migratio.conf.sites import AwsOptions, OpenStackOptions

if TYPE_CHECKING:  # the client modules load their SDKs: imported when a job first needs one
    from migratio.aws.clients import AwsClients
    from migratio.openstack.glance import GlanceClient
    from migratio.openstack.nova import Nova
    from migratio.openstack.ssh import RemoteShell


@dataclass(frozen=True)
class Services:
    source_glance: Callable[[], GlanceClient]  # this site's Glance
    glance: Callable[[str | None], GlanceClient]  # clouds.yaml cloud name -> a destination's Glance (via: api)
    remote: Callable[[OpenStackOptions], RemoteShell]  # an SSH shell on the destination's head node
    aws: Callable[[AwsOptions], AwsClients]
    nova: Callable[[str], Nova]  # the destination's clouds.yaml cloud -> its Nova (boot check; never this site's)
    # a job's one connection to the head node, for all its steps (site, job id; see Context.remote);
    # None: `remote` (tests)
    head_node: Callable[[OpenStackOptions, str], RemoteShell] | None = None


def default_services(config: Config, environ: Mapping[str, str] | None = None) -> Services:
    env = dict(os.environ if environ is None else environ)

    def glance(cloud: str | None) -> GlanceClient:
        from migratio.openstack import auth
        from migratio.openstack import glance as glance_mod

        return glance_mod.GlanceClient(auth.session(cloud, config.clouds_file, env))

    def remote(site: OpenStackOptions) -> RemoteShell:
        from migratio.openstack import ssh as remote_mod

        return remote_mod.RemoteShell.connect(site)

    def head_node(site: OpenStackOptions, job_id: str) -> RemoteShell:
        from migratio.openstack import openssh

        return openssh.MasterShell.open(site, openssh.control_dir(job_id))

    def aws(site: AwsOptions) -> AwsClients:
        from migratio.aws import clients

        return clients.AwsClients.connect(site)

    def nova(cloud: str) -> Nova:
        from migratio.openstack import auth
        from migratio.openstack import nova as nova_mod

        return nova_mod.Nova(auth.session(cloud, config.clouds_file, env))

    return Services(lambda: glance(config.cloud), glance, remote, aws, nova, head_node)


def preload() -> None:
    """Import the clients every OpenStack job uses, once, in the worker process.

    RQ forks a work-horse per job: what the worker imported, the horse has for free; what it
    imports itself (glanceclient, keystoneauth, paramiko: about 1 s) it pays on every job.
    """
    from migratio.openstack import auth, glance, headnode, openssh, rsync, ssh, stream  # noqa: F401

"""The destination Glance of an OpenStack site conf: the one place that picks how it is reached.

`register: {via: api}`: its API, from this worker (ApiGlance). `via: ssh` (the default): its
head node over one SSH connection, by migratio's client run by `remote_python` there
(HeadNodeGlance, with the glance CLI where that client cannot run), or by the glance CLI
alone when `remote_python` is null (CliGlance).
"""

import contextlib
from typing import Callable, Iterator

from migratio.conf.sites import OpenStackOptions
from migratio.openstack.glance import ApiGlance, GlanceClient
from migratio.openstack.glance_cli import CliGlance
from migratio.openstack.glance_protocol import Glance
from migratio.openstack.headnode import HeadNodeGlance
from migratio.openstack.ssh import RemoteShell


@contextlib.contextmanager
def open_destination(options: OpenStackOptions, site_id: str, api: Callable[[str | None], GlanceClient],
                     connect: Callable[[OpenStackOptions], RemoteShell]) -> Iterator[Glance]:
    """The site's destination Glance, its messages naming it `site_id`; an SSH connection is closed on exit.

    Args:
        api: a clouds.yaml cloud name -> its Glance API client (for via: api).
        connect: opens the SSH connection to the head node (for via: ssh).
    """
    if options.register.via == "api":
        client = api(options.register.cloud)
        client.site = site_id
        yield ApiGlance(client)
        return
    with connect(options) as shell:
        yield HeadNodeGlance(shell, options, site_id) if options.remote_python else CliGlance(shell, options, site_id)

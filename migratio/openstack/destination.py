"""The destination Glance of an OpenStack site conf: the one place that picks how it is reached.

`register: {via: api}`: its API, from this worker (ApiGlance). `via: ssh` (the default): its
head node over one SSH connection, by migratio's client run by `remote_python` there
(HeadNodeGlance, with the glance CLI where that client cannot run), or by the glance CLI
alone when `remote_python` is null (CliGlance).
"""

import contextlib
from contextlib import AbstractContextManager
from typing import Callable, Iterator

from migratio.conf.sites import OpenStackOptions
from migratio.openstack.glance import ApiGlance, GlanceClient
from migratio.openstack.glance_cli import CliGlance
from migratio.openstack.glance_protocol import Glance
from migratio.openstack.headnode import HeadNodeGlance
from migratio.openstack.ssh import RemoteShell


@contextlib.contextmanager
def open_destination(options: OpenStackOptions, site_id: str, api: Callable[[str | None], GlanceClient],
                     connect: Callable[[OpenStackOptions], AbstractContextManager[RemoteShell]],
                     install: bool = False) -> Iterator[Glance]:
    """The site's destination Glance, its messages naming it `site_id`; `connect`'s connection is left on exit.

    Args:
        api: a clouds.yaml cloud name -> its Glance API client (for via: api).
        connect: the SSH connection to the head node, for `with` (for via: ssh): a new one
            (RemoteShell.connect, closed on exit) or the job's (Context.remote, kept open).
        install: migratio's client installs itself in staging_dir on its first run (a job: its
            stream runs it from there without another command).
    """
    if options.register.via == "api":
        client = api(options.register.cloud)
        client.site = site_id
        yield ApiGlance(client)
        return
    with connect(options) as shell:
        yield (HeadNodeGlance(shell, options, site_id, install) if options.remote_python
               else CliGlance(shell, options, site_id))

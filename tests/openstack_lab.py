"""Helpers for tests on the lab's OpenStack side: site-b's head node as a site conf."""

from pathlib import Path

import yaml

from migratio.conf.sites import OpenStackOptions


def head_options(lab, **overrides) -> dict:
    """The site-b conf keys (as YAML would give them) for the lab's head node."""
    head = lab.head_node
    options = {"type": "openstack", "host": head.host, "port": head.port, "user": head.user,
               "key_file": str(head.key_file), "known_hosts": str(head.known_hosts),
               "staging_dir": str(head.staging_dir), "remote_env_file": str(head.env_file),
               "connect_timeout": 10}
    options.update(overrides)
    return {k: v for k, v in options.items() if v is not None}


def head_site(lab, **overrides) -> OpenStackOptions:
    options = head_options(lab, **overrides)
    options.pop("type")
    for key in ("key_file", "known_hosts"):
        if key in options:
            options[key] = Path(options[key])
    return OpenStackOptions(**options)


def site_conf(lab, **overrides) -> str:
    return yaml.safe_dump(head_options(lab, **overrides))

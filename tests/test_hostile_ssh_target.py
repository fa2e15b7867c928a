"""A site conf's `host` or `user` that begins with '-' must never become an ssh option.

A ProxyCommand smuggled in through the user or host would run a local command on the worker.
The conf is refused when it loads (one line naming the file and the key), and every ssh, rsync
and paramiko connection built from options that bypassed the conf (constructed directly) still
runs no local command: each case below points a ProxyCommand at a marker file and proves the
file never appears, against the lab's real sshd.
"""

import logging
from pathlib import Path

import pytest
import yaml

from migratio.conf.sites import OpenStackOptions, load_site
from migratio.errors import ConfigError
from migratio.local.commands import Commands
from migratio.openstack import rsync
from migratio.openstack.openssh import ssh_argv
from migratio.openstack.ssh import RemoteShell
from tests.builders import write_site


def proxy(marker: Path) -> str:
    """An ssh option that runs `touch marker` locally if ssh ever reads it as an option (the
    `#` comments out whatever ssh appends, e.g. `@host`)."""
    return f"-oProxyCommand=touch {marker} #"


@pytest.mark.parametrize("key", ["host", "user"])
def test_a_yaml_conf_with_a_dash_host_or_user_is_refused(tmp_path, key):
    values = {"type": "openstack", "host": "head.example.org", "user": "glance", key: proxy(tmp_path / "m")}
    path = write_site(tmp_path, "evil", yaml.safe_dump(values))
    with pytest.raises(ConfigError) as info:
        load_site(tmp_path, "evil")
    message = str(info.value)
    assert message.startswith(f"{path}: key '{key}' must be ")
    assert "\n" not in message


@pytest.mark.parametrize("variable, key", [("EXTERNAL_HOST", "host"), ("EXTERNAL_USER", "user")])
def test_a_legacy_conf_with_a_dash_host_or_user_is_refused(tmp_path, variable, key):
    lines = {"EXTERNAL_HOST": "head.example.org", "EXTERNAL_USER": "glance", variable: "'-oProxyCommand=id'"}
    path = write_site(tmp_path, "old", "".join(f"export {k}={v}\n" for k, v in lines.items()))
    with pytest.raises(ConfigError, match=f"^{path}: key '{key}' must be "):
        load_site(tmp_path, "old")


@pytest.mark.parametrize("host", ["head.example.org", "head-1", "localhost", "10.0.0.7", "2001:db8::1",
                                  "head.example.org.", "node_7.internal"])
def test_host_names_and_ip_literals_load(tmp_path, host):
    write_site(tmp_path, "ok", yaml.safe_dump({"type": "openstack", "host": host, "user": "glance"}))
    assert load_site(tmp_path, "ok").openstack.host == host


@pytest.mark.parametrize("host", ["-oProxyCommand=id", "-head", "head-", "a b", "h;id", "h$(id)", "[::1]",
                                  "user@head", "", "a..b", "x" * 254])
def test_other_hosts_are_refused(tmp_path, host):
    path = write_site(tmp_path, "bad", yaml.safe_dump({"type": "openstack", "host": host, "user": "glance"}))
    with pytest.raises(ConfigError, match=f"^{path}: key 'host' must be a host name or an IP address"):
        load_site(tmp_path, "bad")


@pytest.mark.parametrize("user", ["glance", "svc.glance", "u_1", "backup-2", "_svc", "machine$"])
def test_posix_user_names_load(tmp_path, user):
    write_site(tmp_path, "ok", yaml.safe_dump({"type": "openstack", "host": "h", "user": user}))
    assert load_site(tmp_path, "ok").openstack.user == user


@pytest.mark.parametrize("user", ["-oProxyCommand=id", "-l", "a b", "root@h", "u:x", "u;id", "", "x" * 300])
def test_other_users_are_refused(tmp_path, user):
    path = write_site(tmp_path, "bad", yaml.safe_dump({"type": "openstack", "host": "h", "user": user}))
    with pytest.raises(ConfigError, match=f"^{path}: key 'user' must be a POSIX user name"):
        load_site(tmp_path, "bad")


# -- the clients, with options that never went through the conf (defence in depth), on the lab

def head_options(lab, **overrides) -> OpenStackOptions:
    head = lab.head_node
    values = dict(host=head.host, port=head.port, user=head.user, key_file=Path(head.key_file),
                  known_hosts=Path(head.known_hosts), staging_dir=str(head.staging_dir), connect_timeout=10)
    return OpenStackOptions(**{**values, **overrides})


def test_ssh_argv_ends_its_options_before_the_destination():
    argv = ssh_argv(OpenStackOptions(host="head.example.org", user="glance"), "true")
    assert argv[-3:] == ["--", "glance@head.example.org", "true"]


@pytest.mark.lab
@pytest.mark.parametrize("key", ["user", "host"])
def test_openssh_runs_no_local_command_from_a_dash_user_or_host(lab, tmp_path, key):
    marker = tmp_path / "proxy-command-ran"
    site = head_options(lab, **{key: proxy(marker)})
    result = Commands(logging.getLogger("test")).run(ssh_argv(site, "true"), check=False, timeout=60)
    assert result.returncode != 0  # never logged in: a bad user, or no such host
    assert not marker.exists()


@pytest.mark.lab
def test_rsync_runs_no_local_command_from_a_dash_user_or_host(lab, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for key in ("user", "host"):
        marker = tmp_path / f"proxy-command-ran-{key}"
        site = head_options(lab, **{key: proxy(marker)})
        argv = rsync.rsync_argv(src, f"{site.staging_dir}/never-{tmp_path.name}", site)
        result = Commands(logging.getLogger("test")).run(argv, check=False, timeout=60)
        assert result.returncode != 0, key
        assert not marker.exists(), key


@pytest.mark.lab
@pytest.mark.parametrize("key", ["user", "host"])
def test_paramiko_runs_no_local_command_from_a_dash_user_or_host(lab, tmp_path, key):
    marker = tmp_path / "proxy-command-ran"
    with pytest.raises(Exception):  # auth fails for that user; that host does not resolve
        RemoteShell.connect(head_options(lab, **{key: proxy(marker)})).close()
    assert not marker.exists()

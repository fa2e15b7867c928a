"""RemoteShell (paramiko) and rsync against the lab's real head-node sshd."""

import getpass
import logging
import socket
import uuid
from dataclasses import replace

import pytest

from migratio.conf.sites import load_site
from migratio.errors import AuthError, HostKeyError, ImageNotFound, TransientError
from migratio.local.commands import Commands
from migratio.openstack import rsync
from migratio.openstack.glance_cli import CliGlance
from migratio.openstack.headnode import HeadNodeGlance
from migratio.openstack.ssh import RemoteShell
from support.lab.services import Sshd
from support.lab.services import run as lab_run
from tests.builders import write_site
from tests.http_double import free_port
from tests.openstack_lab import head_site, impostor_known_hosts, new_key

pytestmark = pytest.mark.lab
MiB = 1024 * 1024


@pytest.fixture
def shell(lab):
    sh = RemoteShell.connect(head_site(lab))
    yield sh
    sh.close()


def other_known_hosts(tmp_path, lab, line_for_host: bool):
    """A known_hosts that has either nothing for the head node or another key for it."""
    head = lab.head_node
    host, port = (head.host, head.port) if line_for_host else ("elsewhere.example", 22)
    return impostor_known_hosts(tmp_path / "known_hosts", host, port)


def test_arguments_reach_the_remote_command_verbatim(shell, tmp_path):
    marker = tmp_path / "pwned"
    hostile = [f"$(touch {marker})", "`id`", "a b", "'quoted'", '"; rm -rf / #', "x\ny", ""]
    code, out, err = shell.run(["printf", "%s|", *hostile])
    assert (code, err) == (0, "")
    assert out == "|".join(hostile) + "|"
    assert not marker.exists()


def test_env_file_is_sourced_first(shell, lab):
    code, out, _ = shell.run(["sh", "-c", 'echo "$OS_IMAGE_URL"; command -v glance'],
                             env_file=str(lab.head_node.env_file))
    assert code == 0
    url, glance = out.split()
    assert url == lab.site_b.glance_url and glance.endswith("/glance")


class HeadNodeWithOwnHome(Sshd):
    """The lab's head-node sshd (same class, same config) whose sessions get HOME=home.

    The lab's ssh user is whoever runs the tests (root here, home /root) and its sshd accepts no
    HOME from the client, so this one adds `SetEnv HOME=...`: the test's ~/.creds never touches
    the real home of that user.
    """

    def __init__(self, directory, home):
        super().__init__(directory)
        self.home = home

    def prepare(self) -> None:
        super().prepare()
        with self.config.open("a") as config:
            config.write(f"SetEnv HOME={self.home}\n")
        lab_run(["/usr/sbin/sshd", "-t", "-f", str(self.config)])


def test_legacy_conf_sources_creds_from_the_head_nodes_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".creds").write_text("export MIGRATIO_CREDS_MARK='set only in ~/.creds'\n")
    head = HeadNodeWithOwnHome(tmp_path / "sshd", home)
    head.start()
    try:
        write_site(tmp_path / "sites", "old", f"export EXTERNAL_HOST=127.0.0.1\nexport EXTERNAL_USER={getpass.getuser()}\n"
                                              f"export EXTERNAL_PORT={head.port}\nexport EXTERNAL_KEY={head.client_key}\n")
        site = load_site(tmp_path / "sites", "old")
        assert site.options.remote_env_file == "~/.creds"
        options = replace(site.options, known_hosts=head.known_hosts, connect_timeout=10)  # no known_hosts in legacy
        shell = RemoteShell.connect(options)
        try:
            show = ["sh", "-c", 'printf "%s|%s" "$HOME" "$MIGRATIO_CREDS_MARK"']
            sourced = shell.run(show, env_file=options.remote_env_file)
            plain = shell.run(show)
        finally:
            shell.close()
    finally:
        head.stop()
    assert sourced == (0, f"{home}|set only in ~/.creds", "")
    assert plain == (0, f"{home}|", "")  # the variable comes from ~/.creds, not from sshd


def test_exit_code_and_both_streams_even_when_large(shell):
    script = "head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2; exit 3"
    code, out, err = shell.run(["sh", "-c", script])
    assert code == 3
    assert (len(out), set(out), len(err), set(err)) == (3000000, {"a"}, 3000000, {"b"})


def test_head_node_client_and_glance_cli_see_the_same_images(lab, shell, glance_image):
    origin = {"source_uuid": str(uuid.uuid4()), "source_cs": "site-x"}
    image = glance_image(site="site-b", properties={**origin, "note": "a | b"})
    fast = HeadNodeGlance(shell, head_site(lab), "site-b")  # remote_python: python3 (the default)
    cli = CliGlance(shell, head_site(lab, remote_python=""), "site-b")
    by_api, by_cli = fast.find(origin), cli.find(origin)
    assert [i["id"] for i in by_api] == [i["id"] for i in by_cli] == [image.id]
    for key in ("status", "checksum", "os_hash_algo", "os_hash_value", "size", "disk_format",
                "source_uuid", "source_cs", "note"):
        assert str(by_api[0][key]) == str(by_cli[0][key]), key
    assert by_api[0]["os_hash_value"] == image.os_hash_value
    assert fast.show(image.id) == by_api[0]
    assert fast.delete(image.id) is True
    assert fast.find(origin) == [] and fast.delete(image.id) is False
    with pytest.raises(ImageNotFound):
        fast.show(image.id)
    assert fast.cli_reason is None and fast.client.python == ["python3"]  # it never fell back to the CLI


def test_unknown_host_key_is_refused(lab, tmp_path):
    known_hosts = other_known_hosts(tmp_path, lab, line_for_host=False)
    with pytest.raises(HostKeyError) as info:
        RemoteShell.connect(head_site(lab, known_hosts=str(known_hosts)))
    head = lab.head_node
    assert f"host key of {head.host}:{head.port} is not in known_hosts file {known_hosts}" in str(info.value)
    assert not info.value.retryable


def test_changed_host_key_is_refused(lab, tmp_path):
    known_hosts = other_known_hosts(tmp_path, lab, line_for_host=True)
    with pytest.raises(HostKeyError, match=f"does not match known_hosts file {known_hosts}"):
        RemoteShell.connect(head_site(lab, known_hosts=str(known_hosts)))


def test_missing_known_hosts_file(lab, tmp_path):
    with pytest.raises(HostKeyError, match=f"known_hosts file {tmp_path / 'nope'} not found"):
        RemoteShell.connect(head_site(lab, known_hosts=str(tmp_path / "nope")))


def test_wrong_client_key_is_an_auth_error(lab, tmp_path):
    key = new_key(tmp_path / "stranger")
    with pytest.raises(AuthError, match=f"authentication failed with key {key}"):
        RemoteShell.connect(head_site(lab, key_file=str(key)))


def test_refused_and_silent_ports_are_transient(lab):
    with pytest.raises(TransientError, match="connection refused"):
        RemoteShell.connect(head_site(lab, port=free_port()))
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(TransientError) as info:
            RemoteShell.connect(head_site(lab, port=silent.getsockname()[1], connect_timeout=2))
        assert info.value.retryable


def test_rsync_to_the_head_node_keeps_holes_and_reports_progress(lab, shell, tmp_path):
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as f:
        f.truncate(32 * MiB)
        f.seek(7 * MiB)
        f.write(b"\x5a" * (2 * MiB))
    site = head_site(lab)
    dest = f"{site.staging_dir}/test-rsync-{tmp_path.name}.raw"
    reports = []
    try:
        Commands(logging.getLogger("test")).run(
            rsync.rsync_argv(src, dest, site, bandwidth_limit=100000),
            on_output=rsync.progress_callback(32 * MiB, lambda d, t, r: reports.append(d)))
        code, out, _ = shell.run(["stat", "-c", "%s %b %B", dest])
        size, blocks, block_size = map(int, out.split())
        assert size == 32 * MiB and blocks * block_size < 8 * MiB
        assert reports[-1] == 32 * MiB
        code, out, _ = shell.run(["cmp", dest, str(src)])  # lab: same machine, so cmp can see both
        assert code == 0
    finally:
        shell.run(["rm", "-f", "--", dest])


def test_rsync_with_a_wrong_known_hosts_is_a_host_key_error(lab, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    site = head_site(lab, known_hosts=str(other_known_hosts(tmp_path, lab, line_for_host=True)))
    result = Commands(logging.getLogger("test")).run(
        rsync.rsync_argv(src, f"{site.staging_dir}/never", site), check=False)
    assert result.returncode in (12, 255)  # 12 alone would look like a lost link: stderr decides
    error = rsync.failure(result.returncode, result.stderr_tail, site)
    assert isinstance(error, HostKeyError) and "does not match" in str(error)

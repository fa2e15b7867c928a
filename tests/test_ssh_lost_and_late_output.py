"""The paramiko shell against the lab's real head-node sshd (issue 14, items 6 and 7):

- a connection that drops while a command runs is a lost connection (transient), never an exit
  status (the link is cut by faults_helpers.CountingProxy, a relay in front of the sshd);
- output is read to its end, also when sshd sends the exit status first (the command exited
  and left its output to a process that writes later): a large JSON answer arrives whole.
"""

import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from migratio.conf.sites import OpenStackOptions
from migratio.errors import CommandFailed, TransientError
from migratio.openstack.headnode import HeadNodeGlance
from migratio.openstack.ssh import RemoteShell
from tests.faults_helpers import CountingProxy

pytestmark = pytest.mark.lab


def head_site(lab, **overrides) -> OpenStackOptions:
    head = lab.head_node
    options = dict(host=head.host, port=head.port, user=head.user, key_file=Path(head.key_file),
                   known_hosts=Path(head.known_hosts), staging_dir=str(head.staging_dir),
                   remote_env_file=str(head.env_file), connect_timeout=10)
    return OpenStackOptions(**{**options, **overrides})


@pytest.fixture
def relayed(lab, tmp_path):
    """(site options through a relay to the head node, the relay)."""
    relay = CountingProxy(lab.head_node.port)
    key = " ".join(Path(lab.head_node.known_hosts).read_text().split()[1:3])
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{lab.head_node.host}]:{relay.port} {key}\n")
    yield head_site(lab, port=relay.port, known_hosts=known_hosts), relay
    relay.close()


def cut_once_started(relay: CountingProxy, marker: Path) -> threading.Thread:
    """Cuts the link as soon as the remote command made `marker` (the head node is this machine)."""
    def cut():
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        relay.drop()

    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    return thread


def test_a_connection_cut_while_a_command_runs_is_transient(relayed, tmp_path):
    options, relay = relayed
    marker = tmp_path / "started"
    with RemoteShell.connect(options) as shell:
        cutter = cut_once_started(relay, marker)
        with pytest.raises(TransientError, match=f"ssh 127.0.0.1:{options.port}: connection lost") as info:
            shell.check(["sh", "-c", 'touch "$1"; sleep 30', "sh", str(marker)], what="a long command")
        cutter.join()
    assert info.value.retryable and not isinstance(info.value, CommandFailed)


def test_a_glance_query_cut_on_its_way_is_retried_not_failed(relayed, tmp_path):
    options, relay = relayed
    marker = tmp_path / "started"
    python = tmp_path / "slow-python"  # remote_python: starts, then the link goes
    python.write_text(f'#!/bin/sh\ntouch {marker}\nsleep 30\nexec python3 "$@"\n')
    python.chmod(0o755)
    with RemoteShell.connect(options) as shell:
        cutter = cut_once_started(relay, marker)
        with pytest.raises(TransientError, match="connection lost"):
            HeadNodeGlance(shell, replace(options, remote_python=str(python)), "site-b").find({"source_uuid": "x"})
        cutter.join()


def test_a_large_answer_that_comes_after_the_exit_status_arrives_whole(lab, tmp_path, clean_lab_images):
    source_uuid = str(uuid.uuid4())
    note = "".join(f"{n:07d} " for n in range(400_000))  # 3.2 MB: more than an SSH channel's window
    image = lab.site_b.api().create_image("large record", source_uuid=source_uuid, note=note)
    late = tmp_path / "late-python"  # exits at once (sshd sends the exit status); its answer comes later
    late.write_text('#!/bin/sh\nin=$(mktemp)\ncat > "$in"\n'
                    '( sleep 6; python3 "$@" < "$in"; rm -f -- "$in" ) &\nexit 0\n')
    late.chmod(0o755)
    options = head_site(lab, remote_python=str(late))
    with RemoteShell.connect(options) as shell:
        found = HeadNodeGlance(shell, options, "site-b").find({"source_uuid": source_uuid})
    assert [(i["id"], i["note"] == note) for i in found] == [(image["id"], True)]

"""rsync argv, progress parsing (from a real rsync run) and exit-code mapping."""

import logging
import shlex
from pathlib import Path

import pytest

from migratio.conf.sites import OpenStackOptions
from migratio.errors import AuthError, CommandFailed, HostKeyError, TransientError
from migratio.local.commands import Commands
from migratio.openstack import rsync

MiB = 1024 * 1024


def site(**kw):
    base = dict(host="head.example.org", user="glance", port=2222, key_file=Path("/etc/migratio/id ed25519"),
                known_hosts=Path("/etc/migratio/known_hosts"))
    return OpenStackOptions(**{**base, **kw})


def test_rsync_argv_is_sparse_resumable_and_checks_host_keys():
    argv = rsync.rsync_argv(Path("/work/j1/img.raw"), "/staging/img-j1.raw", site())
    assert argv[0] == "rsync"
    assert {"--partial", "--sparse", "--times", "--info=progress2"} <= set(argv)
    assert argv[-3:] == ["--", "/work/j1/img.raw", "glance@head.example.org:/staging/img-j1.raw"]
    ssh = shlex.split(argv[argv.index("-e") + 1])  # one argv element, quoted for rsync's own split
    assert ssh[:3] == ["ssh", "-p", "2222"]
    assert ssh[ssh.index("-i") + 1] == "/etc/migratio/id ed25519"
    options = [ssh[i + 1] for i, a in enumerate(ssh) if a == "-o"]
    assert "StrictHostKeyChecking=yes" in options and "BatchMode=yes" in options
    assert "UserKnownHostsFile=/etc/migratio/known_hosts" in options
    assert "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com" in options
    assert not any(a.startswith(("--bwlimit", "-z", "--zc")) for a in argv)


def test_rsync_argv_limits_compression_cipher_and_ipv6():
    argv = rsync.rsync_argv(Path("/w/a"), "/s/a", site(host="2001:db8::1", compress=True,
                                                           ssh_cipher="aes256-gcm@openssh.com"),
                               bandwidth_limit=25000)
    assert "--bwlimit=25000" in argv
    assert argv[argv.index("-z"):argv.index("-z") + 3] == ["-z", "--zc=zstd", "--zl=1"]
    assert argv[-1] == "glance@[2001:db8::1]:/s/a"
    assert "Ciphers=aes256-gcm@openssh.com" in shlex.split(argv[argv.index("-e") + 1])


@pytest.mark.parametrize("line, expected", [
    ("     32,768,000  12%   31.25MB/s    0:00:07 (xfr#1, to-chk=0/1)", (32768000, 31.25 * MiB)),
    ("          2,120   0%    0.00kB/s    0:00:00  ", (2120, 0.0)),
    ("  1.073.741.824 100%  512,00kB/s    0:00:01", None),  # a locale we do not parse: ignored
    ("sending incremental file list", None),
    ("img.raw", None),
])
def test_parse_progress(line, expected):
    assert rsync.parse_progress(line) == expected


def test_progress_from_a_real_rsync_run(tmp_path):
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB)
        f.write(b"x" * MiB)
    reports = []
    argv = ["rsync", "--sparse", "--times", "--info=progress2", str(src), str(tmp_path / "dst.raw")]
    Commands(logging.getLogger("test")).run(
        argv, on_output=rsync.progress_callback(8 * MiB, lambda d, t, r: reports.append((d, t))))
    assert reports and reports[-1] == (8 * MiB, 8 * MiB)
    assert (tmp_path / "dst.raw").read_bytes() == src.read_bytes()
    assert (tmp_path / "dst.raw").stat().st_blocks * 512 < 4 * MiB  # -S kept the holes


def test_host_key_failure_is_permanent_and_names_the_file():
    exc = rsync.failure(255, "Host key verification failed.\r\nrsync: connection unexpectedly closed", site())
    assert isinstance(exc, HostKeyError) and not exc.retryable
    assert "head.example.org:2222" in str(exc) and "/etc/migratio/known_hosts" in str(exc)
    changed = rsync.failure(255, "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @", site())
    assert isinstance(changed, HostKeyError) and "does not match" in str(changed)


def test_auth_failure_is_permanent():
    exc = rsync.failure(255, "glance@head.example.org: Permission denied (publickey).", site())
    assert isinstance(exc, AuthError) and "/etc/migratio/id ed25519" in str(exc)


@pytest.mark.parametrize("code", [10, 12, 30, 35, 255])
def test_link_failures_are_transient(code):
    tail = "ssh: connect to host head.example.org port 2222: Connection refused\nrsync error: unexplained error"
    exc = rsync.failure(code, tail, site())
    assert isinstance(exc, TransientError) and exc.retryable
    assert str(exc) == (f"transfer to head.example.org:2222 failed (rsync exit {code}): "
                        "ssh: connect to host head.example.org port 2222: Connection refused")


def test_other_rsync_failures_are_permanent():
    exc = rsync.failure(11, 'rsync: [receiver] write failed on "/s/a": No space left on device (28)', site())
    assert isinstance(exc, CommandFailed) and not exc.retryable
    assert "No space left on device" in str(exc)

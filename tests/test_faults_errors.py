"""Every external error (rsync, ssh, Glance API, the head node's glance, remote and local
commands, AWS, locks, disk space, qemu-img) is translated at its client boundary into one
migratio.errors class that decides retrying."""

import logging
import socket
import uuid
from pathlib import Path

import paramiko
import pytest
import requests
from botocore import exceptions as botocore_exc
from glanceclient import exc as gexc
from keystoneauth1 import exceptions as ks_exc

from migratio.aws import clients
from migratio.conf.sites import AwsOptions, OpenStackOptions
from migratio.errors import (
    AuthError,
    CommandFailed,
    ConfigError,
    HostKeyError,
    ImageNotFound,
    NotEnoughSpace,
    PermanentError,
    TransientError,
    UnsafeImage,
)
from migratio.local.commands import Commands
from migratio.openstack import glance as glance_mod
from migratio.openstack import rsync, ssh
from migratio.openstack.headnode import HeadNodeGlance
from migratio.queue.locks import LockBusy


class _Key:
    def get_name(self):
        return "ssh-ed25519"

    def get_fingerprint(self):
        return b"\x01" * 16


SITE = OpenStackOptions(host="head", user="u", port=22, known_hosts=Path("/etc/kh"), key_file=Path("/k"))


def _http(cls, code):
    exc = cls("details")
    exc.code = code
    return exc


CLASSIFICATION = [
    # (where it is mapped, the external error, migratio class, retried?)
    ("rsync", lambda: rsync.failure(255, "ssh: connect to host head port 22: Connection refused", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(12, "rsync error: error in rsync protocol data stream (code 12)", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(30, "rsync error: timeout in data send/receive (code 30)", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(10, "rsync error: error in socket IO (code 10)", SITE), TransientError, True),
    ("rsync", lambda: rsync.failure(35, "rsync error: timeout waiting for daemon connection", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(255, "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", SITE),
     HostKeyError, False),
    ("rsync", lambda: rsync.failure(255, "Host key verification failed.", SITE), HostKeyError, False),
    ("rsync", lambda: rsync.failure(255, "u@head: Permission denied (publickey).", SITE), AuthError, False),
    ("rsync", lambda: rsync.failure(11, "rsync: write failed: No space left on device (28)", SITE),
     CommandFailed, False),
    ("rsync", lambda: rsync.failure(23, "rsync: link_stat failed: No such file or directory", SITE),
     CommandFailed, False),
    ("ssh connect", lambda: ssh._translate(paramiko.BadHostKeyException("head", _Key(), _Key()), "head:22", SITE),
     HostKeyError, False),
    ("ssh connect", lambda: ssh._translate(paramiko.AuthenticationException("no"), "head:22", SITE),
     AuthError, False),
    ("ssh connect", lambda: ssh._translate(FileNotFoundError(2, "No such file"), "head:22", SITE),
     ConfigError, False),
    ("ssh connect", lambda: ssh._translate(paramiko.PasswordRequiredException("pw"), "head:22", SITE),
     ConfigError, False),
    ("ssh connect", lambda: ssh._translate(socket.timeout("timed out"), "head:22", SITE), TransientError, True),
    ("ssh connect", lambda: ssh._translate(
        paramiko.ssh_exception.NoValidConnectionsError({("127.0.0.1", 22): ConnectionRefusedError()}),
        "head:22", SITE), TransientError, True),
    ("ssh connect", lambda: ssh._translate(EOFError(), "head:22", SITE), TransientError, True),
    ("ssh connect", lambda: ssh._translate(paramiko.SSHException("Error reading SSH protocol banner"),
                                              "head:22", SITE), TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPNotFound("gone"), "image x", "site-a", "x"),
     ImageNotFound, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPNotFound("gone"), "image list", "site-a"),
     PermanentError, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPUnauthorized("no"), "image x", "site-a"), AuthError, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPForbidden("no"), "image x", "site-a"), AuthError, False),
    ("glance api", lambda: glance_mod.translate(ks_exc.Unauthorized("no"), "image x", "site-a"), AuthError, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPServiceUnavailable("busy"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPInternalServerError("oops"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(_http(gexc.HTTPException, 429), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.CommunicationError("refused"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(ks_exc.ConnectFailure("refused"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(requests.ConnectionError("reset"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(IOError("Corrupt image download. Checksum was x expected y"),
                                                "download of image x", "site-a"), TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPBadRequest("bad"), "image x", "site-a"),
     PermanentError, False),
    ("glance api", lambda: glance_mod.translate(_http(gexc.HTTPException, 413), "upload", "site-b"),
     PermanentError, False),
    ("glance api", lambda: glance_mod.translate(ks_exc.EndpointNotFound("none"), "image x", "site-a"),
     PermanentError, False),
]


def _glance_cli_failure(code: int, stderr: str):
    class Shell:
        where = "head:22"

        def run(self, argv, env_file=None, timeout=None, pty=False, stdin=b""):
            return code, "", stderr
    try:
        HeadNodeGlance(Shell(), SITE, "site-b").delete(str(uuid.uuid4()))
    except CommandFailed as exc:
        return exc


def _shell_check_failure(code: int, stderr: str):
    shell = ssh.RemoteShell.__new__(ssh.RemoteShell)
    shell.where = "head:22"
    shell.run = lambda argv, env_file=None, timeout=None: (code, "", stderr)
    try:
        shell.check(["mkdir", "-p", "/x"])
    except CommandFailed as exc:
        return exc


def _client_error(code: str, status: int):
    return botocore_exc.ClientError({"Error": {"Code": code, "Message": "m"},
                                     "ResponseMetadata": {"HTTPStatusCode": status}}, "CreateSnapshot")


def _aws(exc):
    site = AwsOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:1", bucket="b")
    return clients.translate(exc, site, "CreateSnapshot")


def _command_timeout():
    try:
        Commands(logging.getLogger("t")).run(["sleep", "5"], timeout=0.2)
    except TransientError as exc:
        return exc


CLASSIFICATION += [
    ("remote glance", lambda: _glance_cli_failure(1, "HTTP 503 Service Unavailable"), CommandFailed, True),
    ("remote glance", lambda: _glance_cli_failure(1, "Unable to establish connection to http://glance:9292"),
     CommandFailed, True),
    ("remote glance", lambda: _glance_cli_failure(255, ""), CommandFailed, True),
    ("remote glance", lambda: _glance_cli_failure(1, "HTTP 403 Forbidden"), CommandFailed, False),
    ("remote glance", lambda: _glance_cli_failure(2, "sh: 1: .: cannot open /etc/openrc: No such file"),
     CommandFailed, False),
    ("remote command", lambda: _shell_check_failure(1, "curl: Connection refused"), CommandFailed, True),
    ("remote command", lambda: _shell_check_failure(1, "mkdir: Permission denied"), CommandFailed, False),
    ("local command", _command_timeout, TransientError, True),
    ("aws", lambda: _aws(_client_error("Throttling", 400)), TransientError, True),
    ("aws", lambda: _aws(_client_error("InternalError", 500)), TransientError, True),
    ("aws", lambda: _aws(_client_error("AccessDenied", 403)), AuthError, False),
    ("aws", lambda: _aws(_client_error("NoSuchBucket", 404)), PermanentError, False),
    ("aws", lambda: _aws(_client_error("InvalidParameterValue", 400)), PermanentError, False),
    ("aws", lambda: _aws(botocore_exc.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
     TransientError, True),
    ("aws", lambda: _aws(botocore_exc.NoCredentialsError()), AuthError, False),
    ("lock", lambda: LockBusy("another job is already migrating image x to site y; will retry"),
     TransientError, True),
    ("disk space", lambda: NotEnoughSpace("not enough space"), PermanentError, False),
    ("qemu-img", lambda: UnsafeImage("image has a backing file"), PermanentError, False),
]


@pytest.mark.parametrize("where, make, kind, retried", CLASSIFICATION,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CLASSIFICATION)])
def test_error_classification(where, make, kind, retried):
    """Every external error is mapped at its client boundary to one class that decides retrying:
    transient ones (refused, timeouts, 5xx, lost links) are retried with backoff, the others fail
    the job at once; each message is one line."""
    error = make()
    assert isinstance(error, kind), (where, error)
    assert error.retryable is retried, (where, error)
    assert "\n" not in str(error) and str(error)

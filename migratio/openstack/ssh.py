"""Control commands on a destination head node over SSH (paramiko).

Host keys are always checked against the known_hosts file the site conf names: an unknown
host or a changed key fails with HostKeyError, never auto-accepted. Remote commands are
built from argument lists, each argument quoted with shlex.quote.
"""

import logging
import shlex
import socket
import time
from binascii import hexlify
from pathlib import Path
from typing import Sequence

import paramiko

from migratio.errors import AuthError, CommandFailed, ConfigError, HostKeyError, TransientError

log = logging.getLogger("migratio.remote")

DEFAULT_TIMEOUT = 3600.0
KEEPALIVE = 15
TRANSIENT_STDERR = ("HTTP 500", "HTTP 502", "HTTP 503", "HTTP 504", "Unable to establish connection",
                    "timed out", "Connection refused", "Temporary failure", "Service Unavailable")


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


HOME_PREFIXES = ("~/", "$HOME/", "${HOME}/")  # expanded by the remote shell, not here


def source_env_file(env_file: str) -> str:
    """The remote shell words that source env_file (the one place this is rendered).

    A leading `~/`, `$HOME/` or `${HOME}/` becomes the remote user's `"$HOME"/` (the old tool's
    `. ~/.creds`); the rest of the path is always one shlex-quoted word, never shell syntax.
    """
    for prefix in HOME_PREFIXES:
        if env_file.startswith(prefix):
            return f'. "$HOME"/{shlex.quote(env_file[len(prefix):])}'
    return f". {shlex.quote(env_file)}"


def command_line(argv: Sequence[str], env_file: str | None = None) -> str:
    """The remote shell line for argv: every argument quoted, `. ENV_FILE &&` first if given."""
    line = " ".join(shlex.quote(str(a)) for a in argv)
    return f"{source_env_file(env_file)} && {line}" if env_file else line


class _RejectUnknown(paramiko.RejectPolicy):
    """RejectPolicy with an operator-readable error."""

    def __init__(self, where: str, known_hosts: Path):
        self.where, self.known_hosts = where, known_hosts

    def missing_host_key(self, client, hostname, key):
        fingerprint = hexlify(key.get_fingerprint()).decode()
        raise HostKeyError(
            f"host key of {self.where} is not in known_hosts file {self.known_hosts} "
            f"({key.get_name()} key, md5 {fingerprint}): check the fingerprint and add it with "
            f"ssh-keyscan")


class RemoteShell:
    """An open SSH connection to a head node. Use `connect`; close() when done."""

    def __init__(self, client: paramiko.SSHClient, where: str):
        self.client, self.where = client, where

    @classmethod
    def connect(cls, site) -> "RemoteShell":
        """Connect to site (an OpenStackOptions): host, port, user, key_file, known_hosts."""
        where = address(site.host, site.port)
        client = paramiko.SSHClient()
        _load_known_hosts(client, Path(site.known_hosts))
        client.set_missing_host_key_policy(_RejectUnknown(where, Path(site.known_hosts)))
        try:
            client.connect(
                site.host, port=site.port, username=site.user,
                key_filename=str(site.key_file) if site.key_file else None,
                look_for_keys=site.key_file is None, allow_agent=site.key_file is None,
                timeout=site.connect_timeout, banner_timeout=site.connect_timeout,
                auth_timeout=site.connect_timeout,
            )
        except BaseException as exc:
            client.close()
            if isinstance(exc, Exception):
                raise _translate(exc, where, site) from None
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE)
        log.info("ssh connected to %s@%s", site.user, where)
        return cls(client, where)

    def run(self, argv: Sequence[str], env_file: str | None = None,
            timeout: float | None = DEFAULT_TIMEOUT, pty: bool = False,
            stdin: bytes = b"") -> tuple[int, str, str]:
        """Run argv on the head node (`stdin` is its whole input); returns (exit status, stdout, stderr).

        With `pty`, the command gets a terminal, so it is hung up (SIGHUP) when the connection
        drops, e.g. when this worker is killed: no remote process outlives us and finishes work
        behind our back. Its stderr then arrives merged into stdout.
        """
        line = command_line(argv, env_file)
        log.info("ssh %s: %s", self.where, line)
        try:
            channel_in, stdout, _ = self.client.exec_command(line, timeout=timeout, get_pty=pty)
            if stdin:
                channel_in.write(stdin)
            channel_in.channel.shutdown_write()  # EOF: nothing remote may wait for input
            return _drain(stdout.channel, timeout)
        except (paramiko.SSHException, socket.error, EOFError) as exc:
            raise TransientError(f"ssh {self.where}: connection lost ({_text(exc)})") from None

    def check(self, argv: Sequence[str], env_file: str | None = None, what: str | None = None,
              timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Run argv; non-zero exit raises CommandFailed (retryable for transient-looking errors)."""
        code, out, err = self.run(argv, env_file, timeout)
        if code != 0:
            label = what or f"remote {Path(str(argv[0])).name}"
            last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
            log.warning("%s on %s failed (exit %s); stderr:\n%s", label, self.where, code, err[-4000:])
            raise CommandFailed(f"{label} on {self.where} failed (exit {code})" + (f": {last}" if last else ""),
                                retryable=code == 255 or any(m in err for m in TRANSIENT_STDERR),
                                stderr_tail=err[-4000:])
        return out

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "RemoteShell":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_known_hosts(client: paramiko.SSHClient, path: Path) -> None:
    if not path.is_file():
        raise HostKeyError(f"known_hosts file {path} not found (key 'known_hosts' in the site conf)")
    try:
        client.load_host_keys(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise HostKeyError(f"cannot read known_hosts file {path}: {_text(exc)}") from None


def _translate(exc: Exception, where: str, site) -> Exception:
    if isinstance(exc, (HostKeyError, AuthError, TransientError, ConfigError)):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"host key of {where} does not match known_hosts file {site.known_hosts} "
            f"(got {exc.key.get_name()} md5 {hexlify(exc.key.get_fingerprint()).decode()}): "
            f"the host was reinstalled or someone is in the middle; fix known_hosts only after checking")
    if isinstance(exc, paramiko.PasswordRequiredException):  # (a subclass of AuthenticationException)
        return ConfigError(f"ssh key file {site.key_file} is encrypted (a passphrase-less key is needed)")
    if isinstance(exc, paramiko.AuthenticationException):
        return AuthError(f"ssh {site.user}@{where}: authentication failed with key {site.key_file}")
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return ConfigError(f"ssh key file {site.key_file} cannot be read: {exc.strerror}")
    if isinstance(exc, paramiko.SSHException) and "key" in str(exc).lower() and "not a valid" in str(exc):
        return ConfigError(f"ssh key file {site.key_file} is not a valid private key")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TransientError(f"ssh {where}: connection timed out after {site.connect_timeout}s")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return TransientError(f"ssh {where}: connection refused")
    if isinstance(exc, (OSError, paramiko.SSHException, EOFError)):
        return TransientError(f"ssh {where}: cannot connect ({_text(exc)})")
    return exc


def _drain(channel: paramiko.Channel, timeout: float | None) -> tuple[int, str, str]:
    """Read stdout and stderr together (so neither can fill up and stall the other)."""
    out, err = bytearray(), bytearray()
    deadline = None if timeout is None else time.monotonic() + timeout
    channel.settimeout(1.0)
    while True:
        progressed = False
        while channel.recv_ready():
            out += channel.recv(65536)
            progressed = True
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
            progressed = True
        if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            raise TransientError(f"remote command timed out after {timeout:.0f}s")
        if not progressed:
            channel.status_event.wait(0.05)
    code = channel.recv_exit_status()
    channel.close()
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

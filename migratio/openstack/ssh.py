"""SSH to a destination head node: its address, OpenSSH's argv (rsync's -e and the stream),
the paramiko shell for control commands, host keys, and how a remote failure reads.

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

from migratio.conf.sites import OpenStackOptions
from migratio.errors import AuthError, CommandFailed, ConfigError, HostKeyError, TransientError

log = logging.getLogger("migratio.remote")

DEFAULT_TIMEOUT = 3600.0
KEEPALIVE = 15
SSH_FAILED = 255  # ssh's own exit status: connection, host key, authentication
# stderr of a remote command that failed for a reason that may go away (Glance or its link)
TRANSIENT_STDERR = ("HTTP 50", "Unable to establish", "timed out", "Connection refused", "Temporary failure",
                    "Service Unavailable")
STDERR_KEPT = 4000  # characters of stderr a CommandFailed carries
HOME_PREFIXES = ("~/", "$HOME/", "${HOME}/")  # expanded by the remote shell, not here


# -- the head node's address, in each syntax that names it

def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def address(host: str, port: int) -> str:
    """host:port as messages name the head node ([2001:db8::1]:22 for IPv6)."""
    return f"{_bracketed(host)}:{port}"


def remote_path(site: OpenStackOptions, path: str) -> str:
    """rsync's user@host:path."""
    return f"{site.user}@{_bracketed(site.host)}:{path}"


def known_hosts_name(site: OpenStackOptions) -> str:
    """The name a known_hosts line gives the head node ([host]:port unless the port is 22)."""
    return site.host if site.port == 22 else f"[{site.host}]:{site.port}"


# -- how a failed remote command reads

def last_line(text: str) -> str:
    """The last non-empty line of `text`, stripped ("" when there is none)."""
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")


def looks_transient(code: int, stderr: str) -> bool:
    """Whether a failed remote command is worth a retry: ssh itself failed, or Glance/its link did."""
    return code == SSH_FAILED or any(marker in stderr for marker in TRANSIENT_STDERR)


def command_failed(label: str, code: int, stderr: str, retryable: bool) -> CommandFailed:
    """`<label> failed (exit N): <last stderr line>`."""
    last = last_line(stderr)
    return CommandFailed(f"{label} failed (exit {code})" + (f": {last}" if last else ""),
                         retryable=retryable, stderr_tail=stderr[-STDERR_KEPT:])


# -- the remote shell line

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


# -- host keys

def check_host_key(site: OpenStackOptions) -> str:
    """Whether known_hosts has a key for the head node (what `migratio check` reports)."""
    path = Path(site.known_hosts)
    if not path.is_file():
        raise HostKeyError(f"known_hosts file {path} not found")
    try:
        keys = paramiko.HostKeys(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise HostKeyError(f"cannot read known_hosts file {path}: {exc}") from None
    name = known_hosts_name(site)
    found = keys.lookup(name)
    if not found:
        raise HostKeyError(f"no key for {name} in {path}")
    return f"{name} is in {path} ({', '.join(sorted(found.keys()))})"


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


def _load_known_hosts(client: paramiko.SSHClient, path: Path) -> None:
    if not path.is_file():
        raise HostKeyError(f"known_hosts file {path} not found (key 'known_hosts' in the site conf)")
    try:
        client.load_host_keys(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise HostKeyError(f"cannot read known_hosts file {path}: {_text(exc)}") from None


# -- the paramiko shell (control commands)

class RemoteShell:
    """An open SSH connection to a head node. Use `connect`; close() when done."""

    ssh_options: tuple[str, ...] = ()  # what makes OpenSSH reuse this connection (openssh.MasterShell's)

    def __init__(self, client: paramiko.SSHClient | None, where: str):
        self.client, self.where = client, where

    @classmethod
    def connect(cls, site: OpenStackOptions) -> "RemoteShell":
        """Connect to the site's host, port, user, key_file, checking known_hosts."""
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
        behind our back. Its stderr then arrives merged into stdout. A connection lost before the
        command's exit status and all its output came raises TransientError.
        """
        line = command_line(argv, env_file)
        log.info("ssh %s: %s", self.where, line)
        try:
            channel_in, stdout, _ = self.client.exec_command(line, timeout=timeout, get_pty=pty)
            if stdin:
                channel_in.write(stdin)
            channel_in.channel.shutdown_write()  # EOF: nothing remote may wait for input
            return _drain(stdout.channel, timeout, self.where)
        except (paramiko.SSHException, socket.error, EOFError) as exc:
            raise TransientError(f"ssh {self.where}: connection lost ({_text(exc)})") from None

    def check(self, argv: Sequence[str], env_file: str | None = None, what: str | None = None,
              timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Run argv; non-zero exit raises CommandFailed (retryable for transient-looking errors)."""
        code, out, err = self.run(argv, env_file, timeout)
        if code != 0:
            label = what or f"remote {Path(str(argv[0])).name}"
            log.warning("%s on %s failed (exit %s); stderr:\n%s", label, self.where, code, err[-STDERR_KEPT:])
            raise command_failed(f"{label} on {self.where}", code, err, looks_transient(code, err))
        return out

    def round_trip(self, samples: int = 3) -> float:
        """Seconds of the fastest of `samples` requests the server answers at once (a keepalive
        global request: no command runs), i.e. about one network round trip."""
        transport = self.client.get_transport()
        if transport is None:
            raise TransientError(f"ssh {self.where}: not connected")
        times = []
        try:
            for _ in range(samples):
                start = time.monotonic()
                transport.global_request("keepalive@openssh.com", wait=True)
                times.append(time.monotonic() - start)
        except (paramiko.SSHException, socket.error, EOFError) as exc:
            raise TransientError(f"ssh {self.where}: connection lost ({_text(exc)})") from None
        return min(times)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "RemoteShell":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _translate(exc: Exception, where: str, site: OpenStackOptions) -> Exception:
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


def _drain(channel: paramiko.Channel, timeout: float | None, where: str) -> tuple[int, str, str]:
    """Read stdout and stderr together (so neither can fill up and stall the other) to the
    channel's EOF, then the exit status.

    sshd sends the exit status as soon as the command exits, maybe before the rest of its output
    (still in flight, or written by a process the command left behind): only EOF ends the output.
    A channel that closes without an exit status, its connection gone, is a lost connection.
    """
    out, err = bytearray(), bytearray()
    deadline = None if timeout is None else time.monotonic() + timeout

    def stop_at_deadline() -> None:
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            raise TransientError(f"remote command timed out after {timeout:.0f}s")

    while True:
        progressed = False
        while channel.recv_ready():
            out += channel.recv(65536)
            progressed = True
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
            progressed = True
        if (channel.eof_received or channel.closed) and not channel.recv_ready() and not channel.recv_stderr_ready():
            break  # everything that was sent has been read
        stop_at_deadline()
        if progressed:
            continue
        if channel.exit_status_ready():
            time.sleep(0.01)  # (status_event stays set from here on: it can no longer be waited for)
        else:
            channel.status_event.wait(0.05)
    while not channel.exit_status_ready():  # after EOF, the exit status (or the close) is on its way
        stop_at_deadline()
        channel.status_event.wait(0.05)
    code, transport = channel.exit_status, channel.get_transport()
    connected = transport is not None and transport.is_active()
    channel.close()
    if not connected and (code == -1 or not channel.eof_received):  # no status, or output cut short
        raise TransientError(f"ssh {where}: connection lost while the command ran")
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

"""The OpenSSH client (`ssh`) to a head node, as rsync's -e and the stream run it: its argv and
its refusals; and a job's one connection, an OpenSSH ControlMaster whose clients are the job's
commands (MasterShell), its stream and its rsync. The address, host keys and remote failures
are migratio.openstack.ssh's."""

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from migratio.conf.sites import OpenStackOptions
from migratio.errors import AuthError, ConfigError, HostKeyError, StepError, TransientError
from migratio.openstack.ssh import (
    DEFAULT_TIMEOUT,
    SSH_FAILED,
    STDERR_KEPT,
    RemoteShell,
    address,
    command_line,
    last_line,
)

log = logging.getLogger("migratio.remote")

# Preferred first, OpenSSH's defaults kept after them ("^" = prepend to the default list).
FAST_CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"


def openssh_command(site: OpenStackOptions) -> list[str]:
    """ssh with the site's key, strict host keys and a fast cipher, up to the destination."""
    argv = ["ssh", "-p", str(site.port)]
    if site.key_file:
        argv += ["-i", str(site.key_file), "-o", "IdentitiesOnly=yes"]
    return argv + [
        "-o", f"UserKnownHostsFile={site.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={site.connect_timeout}",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-o", f"Ciphers={site.ssh_cipher or FAST_CIPHERS}",
        "-o", "Compression=no",
    ]


def ssh_argv(site: OpenStackOptions, line: str, via: Sequence[str] = ()) -> list[str]:
    """OpenSSH running the shell `line` on the head node (`--`: the destination is never an option);
    `via`: options that make it a client of the job's ControlMaster (MasterShell.ssh_options)."""
    return [*openssh_command(site), *via, "--", f"{site.user}@{site.host}", line]


def openssh_refusal(stderr_tail: str, site: OpenStackOptions) -> StepError | None:
    """OpenSSH's refusal to connect (host key, authentication) as the error to report, else None."""
    where = address(site.host, site.port)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr_tail:
        return HostKeyError(f"host key of {where} does not match known_hosts file {site.known_hosts} "
                            "(rsync/ssh refused to connect)")
    if "Host key verification failed" in stderr_tail:
        return HostKeyError(f"host key of {where} is not in (or does not match) known_hosts file "
                            f"{site.known_hosts} (rsync/ssh refused to connect)")
    if "Permission denied (publickey" in stderr_tail:
        return AuthError(f"ssh {site.user}@{where}: authentication failed with key {site.key_file}")
    return None


# -- the job's one connection: an OpenSSH ControlMaster, every command and stream a client of it

CONTROL_PREFIX = "migratio-ssh-"  # <tmp>/migratio-ssh-<job id>/: the master's socket and its log, 0700
MASTER_STOP = 5.0  # seconds a master has to exit on SIGTERM before it is killed


def control_dir(job_id: str, base: str | None = None) -> Path:
    """The private dir of a job's ControlMaster (its socket and log); removed when the job ends."""
    return Path(base or tempfile.gettempdir()) / f"{CONTROL_PREFIX}{job_id}"


def remove_control_dir(job_id: str, base: str | None = None) -> None:
    """What a job's master left (a work-horse killed before it could stop it): the master died with it."""
    shutil.rmtree(control_dir(job_id, base), ignore_errors=True)


class ControlMaster:
    """One authenticated OpenSSH connection to a head node for a whole job (`ssh -M -N`).

    Commands, the stream and rsync run `ssh` as its clients (`client_options`): no new login,
    no new key exchange. Started by `start`, a child of the work-horse that dies with it (its
    death signal, and RQ kills the horse's process group); `close` stops it and removes its dir.
    """

    def __init__(self, site: OpenStackOptions, directory: Path, proc: subprocess.Popen):
        self.site, self.directory, self.proc = site, directory, proc
        self.where = address(site.host, site.port)

    @property
    def socket(self) -> Path:
        return self.directory / "master"

    @classmethod
    def start(cls, site: OpenStackOptions, directory: Path) -> "ControlMaster":
        """Log in once; HostKeyError/AuthError/TransientError (one line) when that fails."""
        _private_dir(directory)
        sock, log_path = directory / "master", directory / "log"
        argv = [*openssh_command(site), "-M", "-N", "-o", f"ControlPath={sock}", "-o", "ControlPersist=no",
                "--", f"{site.user}@{site.host}"]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([*_dying_with_parent(), *argv], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log_file)
        master = cls(site, directory, proc)
        try:
            master._wait_ready(site.connect_timeout + 5.0)
        except BaseException:
            master.close()
            raise
        return master

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.socket.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.directory / "log").read_text(errors="replace")[-STDERR_KEPT:]
                raise openssh_refusal(text, self.site) or self._unreachable(text)
            time.sleep(0.005)

    def _unreachable(self, stderr_tail: str) -> TransientError:
        """The master could not reach the head node: the words RemoteShell.connect uses."""
        if "Connection refused" in stderr_tail:
            return TransientError(f"ssh {self.where}: connection refused")
        if "timed out" in stderr_tail or self.proc.poll() is None:
            return TransientError(f"ssh {self.where}: connection timed out after {self.site.connect_timeout}s")
        return TransientError(f"ssh {self.where}: cannot connect ({last_line(stderr_tail) or 'no answer'})")

    def client_options(self) -> list[str]:
        """ssh options that make an `ssh` (the stream's, rsync's -e) a client of this master."""
        return ["-o", f"ControlPath={self.socket}", "-o", "ControlMaster=no"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop the master (SIGTERM, then SIGKILL) and remove its dir; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(MASTER_STOP)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class MasterShell(RemoteShell):
    """A RemoteShell whose commands run as clients of the job's ControlMaster (same interface,
    same quoting); `ssh_options` hands the master to the stream's and rsync's ssh."""

    def __init__(self, master: ControlMaster):
        super().__init__(None, master.where)
        self.master, self.ssh_options = master, tuple(master.client_options())

    @classmethod
    def open(cls, site: OpenStackOptions, directory: Path) -> "MasterShell":
        return cls(ControlMaster.start(site, directory))

    def run(self, argv: Sequence[str], env_file: str | None = None,
            timeout: float | None = DEFAULT_TIMEOUT, pty: bool = False,
            stdin: bytes = b"") -> tuple[int, str, str]:
        """As RemoteShell.run; a master gone (exit 255 of the client) is a lost connection."""
        line = command_line(argv, env_file)
        site = self.master.site
        if not self.master.alive():  # the link dropped since: log in again (e.g. to clean up after it)
            self.master.close()
            self.master = ControlMaster.start(site, self.master.directory)
        log.info("ssh %s: %s", self.where, line)
        client = [*openssh_command(site), *self.ssh_options, *(["-tt"] if pty else ["-T"]),
                  "--", f"{site.user}@{site.host}", line]
        try:
            done = subprocess.run(client, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransientError(f"remote command timed out after {timeout:.0f}s") from None
        if done.returncode == SSH_FAILED and not self.master.alive():
            raise TransientError(f"ssh {self.where}: connection lost while the command ran")
        return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")

    def close(self) -> None:
        self.master.close()


def _private_dir(directory: Path) -> None:
    """Make `directory` 0700 (one left by a killed earlier attempt of the job is replaced)."""
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        if directory.is_symlink() or directory.stat().st_uid != os.getuid():
            raise ConfigError(f"ssh control dir {directory} exists and is not this user's: remove it") from None
        shutil.rmtree(directory)
        directory.mkdir(mode=0o700)


def _dying_with_parent() -> list[str]:
    """setpriv's death signal: the master ends with the process that started it, however that ends."""
    return ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []

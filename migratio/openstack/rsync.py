"""rsync over ssh to a head node: the argv, its progress lines and its exit codes."""

import re
import shlex
from pathlib import Path
from typing import Callable

from migratio.errors import AuthError, CommandFailed, HostKeyError, StepError, TransientError
from migratio.openstack.ssh import address

# Preferred first, OpenSSH's defaults kept after them ("^" = prepend to the default list).
FAST_CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
IO_TIMEOUT = 600  # rsync --timeout: seconds without data before it gives up (exit 30)
# rsync exit codes worth a retry: socket/stream errors, timeouts, ssh itself (255).
TRANSIENT_CODES = frozenset({10, 12, 30, 35, 255})
PROGRESS_RE = re.compile(r"^\s*([\d,.]+)\s+(\d+)%\s+([\d.]+)([kMGT]?B)/s\b")
UNITS = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def ssh_command(site) -> str:
    """The value of rsync's -e: ssh with the site's key, strict host keys and a fast cipher."""
    argv = ["ssh", "-p", str(site.port)]
    if site.key_file:
        argv += ["-i", str(site.key_file), "-o", "IdentitiesOnly=yes"]
    argv += [
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
    return shlex.join(argv)


def remote_target(site, path: str) -> str:
    host = f"[{site.host}]" if ":" in site.host else site.host
    return f"{site.user}@{host}:{path}"


def rsync_argv(src: Path, dest_path: str, site, bandwidth_limit: int | None = None) -> list[str]:
    """rsync argv sending one file; sparse-aware (-S), resumable (--partial), -t for quick re-runs.

    Args:
        bandwidth_limit: KiB/s (rsync --bwlimit), from the site's limits.
    """
    argv = ["rsync", "--partial", "--sparse", "--times", "--info=progress2", "--no-motd",
            f"--timeout={IO_TIMEOUT}", "-e", ssh_command(site)]
    if bandwidth_limit:
        argv.append(f"--bwlimit={int(bandwidth_limit)}")
    if site.compress:
        argv += ["-z", "--zc=zstd", "--zl=1"]
    argv += ["--", str(src), remote_target(site, dest_path)]
    return argv


def parse_progress(line: str) -> tuple[int, float | None] | None:
    """(bytes done, rate in bytes/s) from an rsync --info=progress2 line, else None."""
    match = PROGRESS_RE.match(line)
    if not match:
        return None
    done = int(match.group(1).replace(",", "").replace(".", ""))
    rate = float(match.group(3)) * UNITS.get(match.group(4), 1)
    return done, rate


def progress_callback(total: int, report: Callable[[int, int, float | None], None]) -> Callable[[str], None]:
    """An on_output callback for Commands.run that feeds rsync progress to `report`."""

    def on_line(line: str) -> None:
        parsed = parse_progress(line)
        if parsed:
            done, rate = parsed
            report(min(done, total), total, rate)

    return on_line


def failure(returncode: int, stderr_tail: str, site) -> StepError:
    """A failed rsync as the error the operator needs: host key, auth, transient or permanent."""
    where = address(site.host, site.port)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr_tail:
        return HostKeyError(f"host key of {where} does not match known_hosts file {site.known_hosts} "
                            "(rsync/ssh refused to connect)")
    if "Host key verification failed" in stderr_tail:
        return HostKeyError(f"host key of {where} is not in (or does not match) known_hosts file "
                            f"{site.known_hosts} (rsync/ssh refused to connect)")
    if "Permission denied (publickey" in stderr_tail:
        return AuthError(f"ssh {site.user}@{where}: authentication failed with key {site.key_file}")
    reason = f"transfer to {where} failed (rsync exit {returncode}): {_reason(stderr_tail, returncode)}"
    if returncode in TRANSIENT_CODES:
        return TransientError(reason)
    return CommandFailed(reason, retryable=False, stderr_tail=stderr_tail)


def _reason(stderr_tail: str, returncode: int) -> str:
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    useful = [ln for ln in lines
              if not ln.startswith("rsync error:") and "connection unexpectedly closed" not in ln]
    return (useful or lines or [f"exit status {returncode}"])[-1]

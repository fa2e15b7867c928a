"""rsync over ssh to a head node: the argv, its progress lines and its exit codes."""

import re
import shlex
from pathlib import Path
from typing import Callable, Sequence

from migratio.conf.sites import OpenStackOptions
from migratio.errors import CommandFailed, StepError, TransientError
from migratio.openstack.openssh import openssh_command, openssh_refusal
from migratio.openstack.ssh import address, last_line, remote_path

IO_TIMEOUT = 600  # rsync --timeout: seconds without data before it gives up (exit 30)
# rsync exit codes worth a retry: socket/stream errors, timeouts, ssh itself (255).
TRANSIENT_CODES = frozenset({10, 12, 30, 35, 255})
PROGRESS_RE = re.compile(r"^\s*([\d,.]+)\s+(\d+)%\s+([\d.]+)([kMGT]?B)/s\b")
UNITS = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def rsync_argv(src: Path, dest_path: str, site: OpenStackOptions, bandwidth_limit: int | None = None,
               via: Sequence[str] = ()) -> list[str]:
    """rsync argv sending one file; sparse-aware (-S), resumable (--partial), -t for quick re-runs.

    rsync runs the -e command as `... -l USER HOST rsync --server ...`: the user is -l's argument
    and rsync refuses a host beginning with '-' (the site conf refuses both anyway).

    Args:
        bandwidth_limit: KiB/s (rsync --bwlimit), from the site's limits.
        via: ssh options that make its ssh a client of the job's ControlMaster (MasterShell.ssh_options).
    """
    argv = ["rsync", "--partial", "--sparse", "--times", "--info=progress2", "--no-motd",
            f"--timeout={IO_TIMEOUT}", "-e", shlex.join([*openssh_command(site), *via])]
    if bandwidth_limit:
        argv.append(f"--bwlimit={int(bandwidth_limit)}")
    if site.compress is True:  # (not with auto: rsync's zstd needs rsync >= 3.2.3 at both ends)
        argv += ["-z", "--zc=zstd", "--zl=1"]
    argv += ["--", str(src), remote_path(site, dest_path)]
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


def failure(returncode: int, stderr_tail: str, site: OpenStackOptions) -> StepError:
    """A failed rsync as the error the operator needs: host key, auth, transient or permanent."""
    refusal = openssh_refusal(stderr_tail, site)
    if refusal:
        return refusal
    reason = (f"transfer to {address(site.host, site.port)} failed (rsync exit {returncode}): "
              f"{_reason(stderr_tail, returncode)}")
    if returncode in TRANSIENT_CODES:
        return TransientError(reason)
    return CommandFailed(reason, retryable=False, stderr_tail=stderr_tail)


def _reason(stderr_tail: str, returncode: int) -> str:
    """rsync's last own line, past its generic ones ("rsync error: ...", "connection unexpectedly closed")."""
    useful = "\n".join(ln for ln in stderr_tail.splitlines()
                       if not ln.strip().startswith("rsync error:") and "connection unexpectedly closed" not in ln)
    return last_line(useful) or last_line(stderr_tail) or f"exit status {returncode}"

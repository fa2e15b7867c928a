"""Streaming an image into the destination Glance over one ssh connection.

The head node runs one shell line: the bytes go into a staged file as they arrive, while the
record is created; then the upload (`--size N`) reads the staged file as it grows. Glance is
reached by migratio's small client installed on the head node (migratio/headnode_glance.py) or,
where that cannot run, by the glance CLI (`image-create`, `image-upload`, `image-delete`).
Transfer and registration overlap, so a migration costs about the slower of the link and the
destination Glance instead of their sum. The staged copy is what a
retry resumes from with rsync if the stream breaks (worker killed, link lost); it is removed
once the upload succeeded.

`--size` makes Glance refuse a short upload (the image stays queued, never active); the line
also checks the staged copy's size and deletes the image if fewer bytes arrived.
"""

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from migratio import ids
from migratio.errors import InvalidInput, StepError, TransientError
from migratio.openstack.headnode import parse_show, remote_failure
from migratio.openstack.rsync import failure as ssh_failure
from migratio.openstack.rsync import ssh_command
from migratio.openstack.ssh import address, source_env_file

CHUNK = 1024 * 1024
PROGRESS_EVERY = 1.0  # seconds between progress reports
BURST = 0.1  # seconds ahead of the rate before sleeping; no credit is saved up (as rsync --bwlimit)
UPLOAD_MARK = "migratio-upload"
PARTIAL_STAGED = 75  # exit status of the line when an earlier attempt left a staged copy (EX_TEMPFAIL)
# awk: the value of the `id` row of glance's Property|Value table (continuation rows have no key)
AWK_ID = "$2 ~ /^ *id *$/ { gsub(/ /, \"\", $3); print $3; exit }"


@dataclass(frozen=True)
class HeadGlance:
    """The shell words the head node's line uses for Glance: the glance CLI, or migratio's client."""

    create: str  # makes the queued record and prints it
    id_of: str  # a filter: create's output in, the new image's id out
    upload: str  # + "$id": reads exactly the announced size from stdin
    delete: str  # + "$id"


def cli_commands(glance: Sequence[str], create_args: Sequence[str], size: int) -> HeadGlance:
    cli = _words(glance)
    return HeadGlance(f"{cli} {_words(create_args)}", f"awk -F'|' {shlex.quote(AWK_ID)}",
                      f"{cli} image-upload --size={int(size)}", f"{cli} image-delete")


def client_commands(python: Sequence[str], client: str, fields: dict, size: int) -> HeadGlance:
    """migratio/headnode_glance.py, installed on the head node at `client` (see RemoteGlance)."""
    run = _words([*python, client])
    spec = json.dumps(fields, sort_keys=True)
    return HeadGlance(f"{run} create {shlex.quote(spec)}", "head -n 1", f"{run} upload --size={int(size)}",
                      f"{run} delete")


def remote_line(glance: HeadGlance, staged: str, size: int, env_file: str | None) -> str:
    """The shell line the head node runs (POSIX sh; every argument is quoted).

    The bytes land in the staged file from the first one on (a background `cat`), while the
    record is created; then `tail -f` follows the staged file into the upload until the
    receiving `cat` has ended. So the link never waits for Glance's client to start.
    """
    q = shlex.quote
    staging, staged_q, n = q(str(Path(staged).parent)), q(staged), int(size)
    give_up = 'kill "$receiver" 2>/dev/null; exit "$rc"'
    steps = [
        f"mkdir -p -- {staging} || exit",
        f'if [ -s {staged_q} ]; then echo "a partial copy is staged: resume it with rsync" >&2; exit {PARTIAL_STAGED}; fi',
        f": > {staged_q} || exit",
        f"exec 3<&0; cat <&3 > {staged_q} & receiver=$!; exec 3<&-",
        f"out=$({glance.create} <&-); rc=$?; printf '%s\\n' \"$out\"",
        f'if [ "$rc" -ne 0 ]; then {give_up}; fi',
        f"id=$(printf '%s\\n' \"$out\" | {glance.id_of})",
        f'case "$id" in ""|-*|*[!0-9a-f-]*) echo "no image id in the output of glance image-create" >&2; '
        f'rc=3; {give_up};; esac',
        f'echo "{UPLOAD_MARK} $id"',
        f'tail -c +1 -s 0.1 -f --pid="$receiver" -- {staged_q} | {glance.upload} "$id"; rc=$?',
        f'if [ "$rc" -ne 0 ]; then {give_up}; fi',
        'wait "$receiver"',
        f'if [ "$(stat -c %s -- {staged_q})" != {n} ]; then {glance.delete} "$id";'
        ' echo "the stream ended early: the image was deleted" >&2; exit 4; fi',
        f"rm -f -- {staged_q}",
    ]
    body = "; ".join(steps)
    return f"{source_env_file(env_file)} && {{ {body}; }}" if env_file else f"{{ {body}; }}"


def _words(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def ssh_argv(site, line: str) -> list[str]:
    """ssh with the same options rsync's -e gets (host keys checked, fast cipher)."""
    return [*shlex.split(ssh_command(site)), f"{site.user}@{site.host}", line]


class Pacer:
    """Sleeps so that writes never run ahead of `rate` bytes/s, without saving up credit."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.paid_until = clock()

    def wrote(self, n: int) -> None:
        if not self.rate:
            return
        now = self.clock()
        self.paid_until = max(self.paid_until, now) + n / self.rate
        if self.paid_until - now >= BURST:
            self.sleep(self.paid_until - now)


def feeder(path: Path, rate: float | None, progress: Callable[[int], None],
           clock: Callable[[], float] = time.monotonic) -> Callable[[BinaryIO], None]:
    """A Commands.run `feed`: writes the file in 1 MiB blocks, paced, reporting progress."""

    def feed(pipe: BinaryIO) -> None:
        pacer, done, reported = Pacer(rate, clock), 0, clock()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                pipe.write(block)
                done += len(block)
                pacer.wrote(len(block))
                if clock() - reported >= PROGRESS_EVERY:
                    progress(done)
                    reported = clock()
        pipe.flush()
        progress(done)

    return feed


def created_id(stdout: str) -> str | None:
    """The image id the create command printed (alone, or in the CLI's table), or the upload mark's."""
    for line in stdout.splitlines():
        if line.startswith(UPLOAD_MARK + " "):
            return _uuid(line.split(" ", 1)[1])
    bare = next((_uuid(line) for line in stdout.splitlines() if _uuid(line)), None)
    return bare or _uuid(parse_show(stdout).get("id", ""))


def outcome(returncode: int, stdout: str, stderr_tail: str, site, site_id: str) -> StepError | None:
    """None on success, else the error: ssh's own failures, or which glance command failed."""
    if returncode == 0:
        return None
    where = address(site.host, site.port)
    if returncode == 255:  # ssh itself: host key, authentication, connection
        error = ssh_failure(returncode, stderr_tail, site)
        if isinstance(error, TransientError):
            last = next((ln.strip() for ln in reversed(stderr_tail.splitlines()) if ln.strip()), "exit 255")
            return TransientError(f"ssh to {where} failed while streaming the image: {last}")
        return error
    what = "image-upload" if any(ln.startswith(UPLOAD_MARK) for ln in stdout.splitlines()) else "image-create"
    return remote_failure(what, site_id, where, returncode, stderr_tail)


def _uuid(text: str) -> str | None:
    try:
        return ids.image_id(text.strip())
    except InvalidInput:
        return None


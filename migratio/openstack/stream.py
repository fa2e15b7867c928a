"""Streaming an image into the destination Glance over one ssh connection.

The head node runs one shell line: the bytes go into a staged file as they arrive, while the
record is created; then the upload (`--size N`) reads the staged file as it grows. Glance is
reached by migratio's small client installed on the head node (openstack/headnode_client.py) or,
where that cannot run, by the glance CLI (`image-create`, `image-upload`, `image-delete`).
Transfer and registration overlap, so a migration costs about the slower of the link and the
destination Glance instead of their sum. The staged copy is what a
retry resumes from with rsync if the stream breaks (worker killed, link lost); it is removed
once the upload succeeded.

With compression (migratio.openstack.compression), the worker sends zstd's output and the line
decodes it before the staged file: everything after that sees the payload's own bytes.

`--size` makes Glance refuse a short upload (the image stays queued, never active); the line
also checks the staged copy's size and deletes the image if fewer bytes arrived.
"""

import contextlib
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from migratio.conf.sites import OpenStackOptions
from migratio.errors import PermanentError, StepError, TransientError
from migratio.openstack.compression import Compressing
from migratio.openstack.glance_cli import AmbiguousTable, image_id_or_none, parse_show, remote_failure
from migratio.openstack.glance_protocol import StreamCommands
from migratio.openstack.openssh import openssh_refusal
from migratio.openstack.ssh import SSH_FAILED, address, last_line, source_env_file
from migratio.openstack.staging_space import STAGED_BLOCK

CHUNK = 1024 * 1024
PROGRESS_EVERY = 1.0  # seconds between progress reports
BURST = 0.1  # seconds ahead of the rate before sleeping; no credit is saved up (as rsync --bwlimit)
UPLOAD_MARK = "migratio-upload"
PARTIAL_STAGED = 75  # exit status of the line when an earlier attempt left a staged copy (EX_TEMPFAIL)
NO_DECODER = 69  # exit status of the line when the decoder is not installed there (EX_UNAVAILABLE)


@dataclass
class Tally:
    """What a feed sent so far: payload bytes, and the bytes on the wire (fewer when compressed)."""

    payload: int = 0
    wire: int = 0


def remote_line(glance: StreamCommands, staged: str, size: int, env_file: str | None,
                decoder: Sequence[str] = ()) -> str:
    """The shell line the head node runs (POSIX sh; every argument is quoted).

    The bytes land in the staged file from the first one on (a background `dd` that seeks over
    blocks of zeros, so the staged copy stays sparse), while the record is created; then `tail -f`
    follows the staged file into the upload until the receiving `dd` has ended. So the link never
    waits for Glance's client to start. With `decoder` (words reading stdin, writing stdout), the
    stream is decoded on its way into the `dd`.
    """
    q = shlex.quote
    staging, staged_q, n = q(str(Path(staged).parent)), q(staged), int(size)
    give_up = 'kill "$receiver" 2>/dev/null; exit "$rc"'
    receive = f"dd bs={STAGED_BLOCK} iflag=fullblock conv=sparse status=none > {staged_q}"
    receive = f"{shlex.join(decoder)} <&3 | {receive}" if decoder else f"{receive} <&3"
    steps = [
        f"mkdir -p -- {staging} || exit",
        f'if [ -s {staged_q} ]; then echo "a partial copy is staged: resume it with rsync" >&2; exit {PARTIAL_STAGED}; fi',
        *([_needs(decoder[0])] if decoder else []),
        f": > {staged_q} || exit",
        f"exec 3<&0; {receive} & receiver=$!; exec 3<&-",
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


def _needs(program: str) -> str:
    """The line's step that ends it (NO_DECODER) before anything is made when `program` is missing."""
    missing = shlex.quote(f"{program} is not installed on the head node")
    return f"command -v {shlex.quote(program)} >/dev/null 2>&1 || {{ echo {missing} >&2; exit {NO_DECODER}; }}"


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
           clock: Callable[[], float] = time.monotonic, compress: bool = False,
           tally: Tally | None = None) -> Callable[[BinaryIO], None]:
    """A Commands.run `feed`: writes the file (through the compressor with `compress`) in blocks of
    at most 1 MiB, paced on the bytes written, reporting the payload bytes done as progress."""
    counts = tally or Tally()

    def feed(pipe: BinaryIO) -> None:
        pacer, reported = Pacer(rate, clock), clock()
        with open(path, "rb") as f, (Compressing(f, path) if compress else contextlib.nullcontext()) as codec:
            source = codec or f
            while block := source.read(CHUNK):
                pipe.write(block)
                counts.wire += len(block)
                counts.payload = codec.consumed if codec else counts.wire
                pacer.wrote(len(block))
                if clock() - reported >= PROGRESS_EVERY:
                    progress(counts.payload)
                    reported = clock()
            pipe.flush()
        counts.payload = codec.consumed if codec else counts.wire
        progress(counts.payload)

    return feed


def created_id(stdout: str) -> str | None:
    """The image id the create command printed (alone, or in the CLI's table), or the upload mark's;
    None when there is no single one (an ambiguous table names none)."""
    lines = stdout.split("\n")  # (not splitlines: a table's value may hold U+2028 and the like)
    for line in lines:
        if line.startswith(UPLOAD_MARK + " "):
            return image_id_or_none(line.split(" ", 1)[1])
    bare = next((image_id_or_none(line) for line in lines if image_id_or_none(line)), None)
    if bare:
        return bare
    with contextlib.suppress(AmbiguousTable):
        return image_id_or_none(parse_show(stdout).get("id", ""))
    return None


def outcome(returncode: int, stdout: str, stderr_tail: str, site: OpenStackOptions,
            site_id: str) -> StepError | None:
    """None on success, else the error: ssh's own failures, or which glance command failed."""
    if returncode == 0:
        return None
    where = address(site.host, site.port)
    if returncode == NO_DECODER:
        return PermanentError(f"compressed stream to {site_id}: {last_line(stderr_tail)} ({where}): install "
                              "zstd there or set 'compress: false'")
    if returncode == SSH_FAILED:  # ssh itself: host key, authentication, connection
        return openssh_refusal(stderr_tail, site) or TransientError(
            f"ssh to {where} failed while streaming the image: {last_line(stderr_tail) or 'exit 255'}")
    what = "image-upload" if any(ln.startswith(UPLOAD_MARK) for ln in stdout.splitlines()) else "image-create"
    return remote_failure(what, site_id, where, returncode, stderr_tail)

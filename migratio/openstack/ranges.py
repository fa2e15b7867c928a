"""Streaming one image over several ssh connections at once (`streams: N|auto`): the range plan,
the head node's shell lines, and how many streams `auto` picks.

The payload's data extents are cut into ranges (at most RANGE_BYTES, aligned to STAGED_BLOCK;
holes are never sent). Each of N ssh connections runs `writer_line`: it reads a header
`<start> <end>`, that many bytes (written into the staged file at their offset, `dd conv=sparse`),
then a trailer; only a complete range gets its completion marker `<staged>.ranges/<start>-<end>`
and is acknowledged. One more connection runs `control_line`: it creates the image, then reads
the ends of the ranges the worker announces in order as they complete and emits the staged file
up to each (holes included) into the upload, so Glance gets exactly the payload while it is sent.
A retry finds the markers (`prepare_argv`) and sends only the ranges without one.
"""

import math
import os
import shlex
from pathlib import Path
from typing import NamedTuple

from migratio.local.sparse import data_extents
from migratio.openstack.glance_protocol import StreamCommands
from migratio.openstack.ssh import source_env_file
from migratio.openstack.staging_space import STAGED_BLOCK
from migratio.openstack.stream import UPLOAD_MARK

# A range's most bytes: small, so that the N streams complete ranges about in order and Glance is
# fed all along (it waits for the oldest range in flight); a resume re-sends at most this per stream.
RANGE_BYTES = 8 * 1024 * 1024
MARKS_SUFFIX = ".ranges"  # the completion markers' dir, next to the staged file
DONE_MARK = "migratio-range-done"  # a writer's acknowledgement: `<mark> <start> <end>`
END_MARK = "migratio-range-end"  # the trailer after a range's bytes: `<mark> <start>`
READY_MARK = "migratio-ranges-ready"  # a writer's first line: its connection is up, send it a range
WINDOW = 2 * 1024 * 1024  # OpenSSH's channel window: one stream has at most this in flight
AUTO_RATE = 125 * 1000 * 1000  # bytes/s `auto` aims at without a bandwidth_limit (1 Gbit/s)
AUTO_MAX = 8
SHORT_RANGE = 5  # writer_line's exit status when a range's bytes ended early (its stream was cut)


class Range(NamedTuple):
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.start}-{self.end}"


def plan(payload: Path) -> list[Range]:
    """The payload's data extents, widened to whole STAGED_BLOCKs, cut into ranges of at most
    RANGE_BYTES; the same for every attempt (whatever N), so a retry's markers name its ranges."""
    with open(payload, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        merged: list[list[int]] = []
        for start, end in data_extents(f.fileno(), size):
            start, end = start // STAGED_BLOCK * STAGED_BLOCK, min(size, -(-end // STAGED_BLOCK) * STAGED_BLOCK)
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
    return [Range(pos, min(pos + RANGE_BYTES, end)) for start, end in merged for pos in range(start, end, RANGE_BYTES)]


def marks_dir(staged: str) -> str:
    return staged + MARKS_SUFFIX


def prepare_argv(staged: str, size: int) -> list[str]:
    """An argv that lists the markers of an earlier attempt's complete ranges (its staged file of
    the payload's size there), or else makes an empty staged file of that size (all hole) and the
    markers' dir."""
    script = ('if [ -d "$2" ] && [ "$(stat -c %s -- "$1" 2>/dev/null)" = "$3" ]; then ls -- "$2"; exit; fi; '
              'rm -rf -- "$2" && : > "$1" && truncate -s "$3" -- "$1" && mkdir -- "$2"')
    return ["sh", "-c", script, "sh", staged, marks_dir(staged), str(int(size))]


def staged_ranges(listing: str, ranges: list[Range]) -> set[Range]:
    """The ranges of the plan whose marker `prepare_argv` listed."""
    names = set(listing.split())
    return {r for r in ranges if r.name in names}


def writer_line(staged: str) -> str:
    """One data stream's line: says it is ready, then takes ranges in (header, bytes, trailer),
    each written at its offset and marked complete only when all its bytes and its trailer came;
    acknowledged on stdout."""
    q = shlex.quote
    staged_q, marks_q = q(staged), q(marks_dir(staged))
    return (
        f'echo "{READY_MARK}"; '
        "while IFS=' ' read -r start end; do "
        'case "$start:$end" in :*|*:|*[!0-9:]*) echo "bad range header" >&2; exit 2;; esac; '
        f'dd bs={STAGED_BLOCK} iflag=fullblock,count_bytes count=$((end - start)) oflag=seek_bytes '
        f'seek="$start" conv=notrunc,sparse status=none of={staged_q} || exit; '
        f'IFS= read -r trailer && [ "$trailer" = "{END_MARK} $start" ] || '
        f'{{ echo "range $start-$end ended early" >&2; exit {SHORT_RANGE}; }}; '
        f': > {marks_q}/"$start-$end" || exit; '
        f'echo "{DONE_MARK} $start $end"; '
        "done"
    )


def control_line(glance: StreamCommands, staged: str, size: int, env_file: str | None) -> str:
    """The line that creates the image and uploads the staged file, up to each end the worker
    announces on stdin (in order, once that range is complete); a short upload deletes the image."""
    q = shlex.quote
    staged_q, marks_q, n = q(staged), q(marks_dir(staged)), int(size)
    sent_q = q(marks_dir(staged) + "/.uploaded")
    reader = (
        "pos=0; while IFS= read -r end; do "
        'case "$end" in ""|*[!0-9]*) break;; esac; '
        f'dd if={staged_q} bs=1048576 iflag=skip_bytes,count_bytes skip="$pos" count=$((end - pos)) status=none '
        '|| break; pos=$end; done; '
        f'echo "$pos" > {sent_q}'
    )
    steps = [
        f"out=$({glance.create} <&-); rc=$?; printf '%s\\n' \"$out\"",
        'if [ "$rc" -ne 0 ]; then exit "$rc"; fi',
        f"id=$(printf '%s\\n' \"$out\" | {glance.id_of})",
        'case "$id" in ""|-*|*[!0-9a-f-]*) echo "no image id in the output of glance image-create" >&2; exit 3;; esac',
        f'echo "{UPLOAD_MARK} $id"',
        f'{{ {reader}; }} | {glance.upload} "$id"; rc=$?',
        'if [ "$rc" -ne 0 ]; then exit "$rc"; fi',
        (f'if [ "$(cat {sent_q})" != {n} ]; then {glance.delete} "$id";'
         ' echo "the streams ended early: the image was deleted" >&2; exit 4; fi'),
        f"rm -rf -- {staged_q} {marks_q}",
    ]
    body = "; ".join(steps)
    return f"{source_env_file(env_file)} && {{ {body}; }}" if env_file else f"{{ {body}; }}"


def auto_streams(rtt: float, rate: float | None) -> int:
    """`streams: auto`: enough streams for `rate` (the bandwidth_limit, else AUTO_RATE) when one
    has at most WINDOW bytes in flight per round trip: ceil(rate x RTT / WINDOW), 1..AUTO_MAX."""
    wanted = math.ceil((rate or AUTO_RATE) * max(rtt, 0.0) / WINDOW)
    return max(1, min(AUTO_MAX, wanted))

"""Staged files nothing will use any more, in a destination's staging dir.

A job removes what it staged on every exit path it can (a retry keeps a partial copy to resume
it); a job that died, or whose head node was unreachable at its end, leaves its file behind. One
counts as stale when it is this site's (`<image>-<name>.<format>`, as the transfer step names
it), older than `lock_ttl` (no job wrote it for that long) and no job holds the lock of its
(image, destination). Other source sites' files are theirs to judge.
"""

import math
import posixpath
from dataclasses import dataclass
from typing import Callable

from redis import RedisError

from migratio import ids
from migratio.check.probe import Fail
from migratio.errors import InvalidInput
from migratio.openstack.ssh import RemoteShell

UUID_LENGTH = 36


@dataclass(frozen=True)
class Leftovers:
    """What tells a stale staged file of one destination."""

    source: str  # this site's `name`, in the staged names
    max_age: int  # seconds: `lock_ttl`
    held: Callable[[str], bool]  # image id -> a job holds its lock to this destination


def check_leftovers(shell: RemoteShell, staging_dir: str, host: str, leftovers: Leftovers) -> str:
    """Fail listing the stale staged files, with the command that removes them; else a note ("" or
    why they could not be judged)."""
    try:
        stale = stale_files(shell, staging_dir, leftovers)
    except RedisError:
        return "; stale staged files not checked: Redis is unreachable"
    if stale:
        paths = " ".join(posixpath.join(staging_dir, name) for name in stale)
        them, files = ("it", "file") if len(stale) == 1 else ("them", "files")
        raise Fail(f"{staging_dir} holds {len(stale)} staged {files} older than lock_ttl ({leftovers.max_age} s) "
                   f"that no job holds: {', '.join(stale)}", f"remove {them} on {host}: rm -f -- {paths}")
    return ""


def stale_files(shell: RemoteShell, staging_dir: str, leftovers: Leftovers) -> list[str]:
    minutes = max(1, math.ceil(leftovers.max_age / 60))
    code, out, err = shell.run(["find", staging_dir, "-maxdepth", "1", "-type", "f", "-mmin", f"+{minutes}",
                                "-printf", "%f\\n"], timeout=60)
    if code != 0:
        raise Fail(f"cannot list {staging_dir}: {err.strip()[-200:] or f'exit {code}'}")
    stale = []
    for name in out.splitlines():
        image = _image_of(name, leftovers.source)
        if image and not leftovers.held(image):
            stale.append(name)
    return sorted(stale)


def _image_of(name: str, source: str) -> str | None:
    """The image id in a staged name of this site (`<uuid>-<source>.<format>`), else None."""
    image, rest = name[:UUID_LENGTH], name[UUID_LENGTH:]
    if not rest.startswith(f"-{source}.") or "." in rest[len(source) + 2:]:
        return None
    try:
        return ids.image_id(image)
    except InvalidInput:
        return None

"""Free space in a head node's staging dir, and what a staged copy really takes there.

Staged copies are sparse: rsync writes them with --sparse, the stream with `dd conv=sparse` in
STAGED_BLOCK blocks (a block of zeros is skipped, not written). So what a copy needs is the
payload's blocks that hold data, not its (virtual) size.
"""

from pathlib import Path

from migratio.errors import NotEnoughSpace, PermanentError
from migratio.local.sparse import sparse_copy_bytes
from migratio.openstack.ssh import RemoteShell
from migratio.units import whole_mib

STAGED_BLOCK = 64 * 1024  # the stream's dd block size (rsync --sparse skips finer holes than this)


def staged_bytes(payload: Path) -> int:
    """At most what a staged copy of the payload takes on the head node."""
    return sparse_copy_bytes(payload, STAGED_BLOCK)


def parse_df(text: str) -> int | None:
    """Available bytes from `df -Pk` output (second line, fourth column, KiB)."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        return None
    cols = lines[-1].split()
    return int(cols[3]) * 1024 if len(cols) >= 4 and cols[3].isdigit() else None


def ensure_free(shell: RemoteShell, directory: str, needed: int, what: str, site_id: str) -> int:
    """Make the staging dir if needed; NotEnoughSpace when it has less than `needed` bytes free.
    Returns the free bytes."""
    out = shell.check(["sh", "-c", 'mkdir -p -- "$1" && df -Pk -- "$1"', "sh", directory],
                      what="mkdir and df of the staging dir", timeout=60)
    free = parse_df(out)
    if free is None:
        raise PermanentError(f"cannot read the free space of {directory} on {site_id} from df: {out.strip()[-200:]!r}")
    if free < needed:
        raise NotEnoughSpace(f"not enough space in {directory} on {site_id} for {what}: need {whole_mib(needed)}, "
                             f"{whole_mib(free)} free")
    return free

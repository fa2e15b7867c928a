"""A file's holes: which byte ranges and which fixed-size blocks hold data (SEEK_DATA/SEEK_HOLE).

Used to send only data (EBS direct) and to know how much a sparse copy of a file really takes.
"""

import errno
import os
from pathlib import Path
from typing import Iterator


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges holding data, from SEEK_DATA/SEEK_HOLE (the whole file if unsupported)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            yield offset, size  # the filesystem cannot tell: treat the rest as data
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def block_ranges(fd: int, size: int, block: int) -> Iterator[range]:
    """Ranges of indexes of the `block`-byte blocks touching a data extent, ascending, each block once."""
    following = 0
    for start, end in data_extents(fd, size):
        blocks = range(max(start // block, following), (end - 1) // block + 1)
        if blocks:
            yield blocks
            following = blocks.stop


def sparse_copy_bytes(path: Path, block: int) -> int:
    """At most the bytes a copy of the file takes when written `block` bytes at a time, skipping
    holes (rsync --sparse, dd conv=sparse): the blocks that touch data."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return min(size, block * sum(map(len, block_ranges(f.fileno(), size, block))))

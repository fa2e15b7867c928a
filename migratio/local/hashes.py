"""Streaming file hashes (1 MiB reads), several algorithms in one pass."""

import hashlib
from pathlib import Path
from typing import Callable, Iterable

CHUNK = 1024 * 1024


def file_hashes(path: Path, algorithms: Iterable[str] = ("md5", "sha512"),
                progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """{algorithm: hex digest} of the file, read once."""
    hashers = {name: hashlib.new(name) for name in dict.fromkeys(algorithms)}
    done = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            for h in hashers.values():
                h.update(view[:n])
            done += n
            if progress:
                progress(done)
    return {name: h.hexdigest() for name, h in hashers.items()}

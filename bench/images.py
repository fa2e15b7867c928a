"""The benchmark's images: made here, uploaded to site-a's Glance in the stored format of the case.

realistic: an ext4 filesystem (`mke2fs -t ext4 -d DIR`, no mount) populated from a copy of
           real files from /usr (regular files, sorted, until the data target is reached), plus
           free space, in a sparse raw file of the virtual size; converted to qcow2 for a qcow2
           store, uploaded as it is for a raw store (Glance writes every byte: the store file is
           the raw disk whole, zeros included).
random:    the lab's incompressible image (support.lab.images.make_qcow2: pseudo-random 1 MiB
           extents spread over the disk), the pre-issue-16 default.
Per image: virtual size, data bytes (allocated extents of the raw disk) and their `zstd -1` ratio.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from bench.flows import allocated_bytes
from migratio.local.sparse import data_extents
from support.lab.images import make_qcow2, parse_size

MiB = 1024 * 1024
KINDS = ("realistic", "random")
STORES = ("qcow2", "raw")
SOURCE_TREE = Path("/usr")


@dataclass
class Image:
    size: str
    kind: str              # realistic | random
    store: str             # the disk format in site-a's Glance store: qcow2 | raw
    virtual_bytes: int
    data_bytes: int        # allocated bytes of the raw disk (what a filesystem-aware copy must move)
    zstd1_ratio: float     # data bytes / their `zstd -1` size
    id: str
    checksum: str
    store_path: Path       # the file in site-a's Glance store: what every flow reads or sends
    file_bytes: int
    allocated_bytes: int   # allocated extents of the store file (what the ceiling sends)
    prepare_s: dict

    @property
    def label(self) -> str:
        return f"{self.size} {self.kind} {self.store}"


def populate(target: Path, data_bytes: int, source: Path = SOURCE_TREE) -> int:
    """Copy regular files from `source` (sorted walk) into `target` until `data_bytes`; returns bytes."""
    total = 0
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            src = Path(root, name)
            if src.is_symlink() or not src.is_file():
                continue
            try:
                size = src.stat().st_size
                if total + size > data_bytes:
                    continue
                dst = target / src.relative_to(source)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            except OSError:
                continue
            total += size
            if total >= data_bytes * 0.98:
                return total
    return total


def make_filesystem(raw: Path, virtual: int, data_bytes: int, work: Path) -> None:
    """A sparse raw disk holding an ext4 filesystem filled with `data_bytes` of real files."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        populate(work, data_bytes)
        with open(raw, "wb") as f:
            f.truncate(virtual)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(work), str(raw)],
                       check=True, capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def zstd_ratio(path: Path) -> float:
    """Data extents of `path` / their size through `zstd -1` (streamed, never held whole)."""
    proc = subprocess.Popen(["zstd", "-1", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    counted = [0]

    def count():
        while chunk := proc.stdout.read(MiB):
            counted[0] += len(chunk)

    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    fd, fed = os.open(path, os.O_RDONLY), 0
    try:
        for start, end in data_extents(fd, os.fstat(fd).st_size):
            for pos in range(start, end, MiB):
                block = os.pread(fd, min(MiB, end - pos), pos)
                proc.stdin.write(block)
                fed += len(block)
    finally:
        os.close(fd)
        proc.stdin.close()
        reader.join()
        proc.wait()
    return round(fed / counted[0], 2) if counted[0] else 1.0


def make_raw(kind: str, size: str, data_mib: int, raw: Path, work: Path) -> None:
    virtual = parse_size(size)
    if kind == "realistic":
        make_filesystem(raw, virtual, data_mib * MiB, work)
        return
    qcow2 = raw.with_suffix(".tmp.qcow2")
    make_qcow2(qcow2, size, data_mib, seed=zlib.crc32(size.encode()))
    try:
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw)],
                       check=True, capture_output=True)
    finally:
        qcow2.unlink(missing_ok=True)


def prepare_image(lab, size: str, kind: str, store: str, data_percent: float, scratch: Path, log) -> Image:
    """Make the image, upload it to site-a in `store` format; the local copies are removed."""
    virtual = parse_size(size)
    data_mib = max(1, int(virtual // MiB * data_percent / 100))
    name = f"bench-{size}-{kind}-{store}"
    log(f"== image {name}: {data_mib} MiB of {kind} data, uploaded to site-a as {store}")
    raw, qcow2 = scratch / f"{name}.raw", scratch / f"{name}.qcow2"
    t0 = time.monotonic()
    try:
        make_raw(kind, size, data_mib, raw, scratch / f"{name}.work")
        t1 = time.monotonic()
        data, ratio = allocated_bytes(raw), zstd_ratio(raw)
        t2 = time.monotonic()
        upload = raw
        if store == "qcow2":
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                           check=True, capture_output=True)
            upload = qcow2
        record = lab.upload_image("site-a", upload, name, disk_format=store)
    finally:
        raw.unlink(missing_ok=True)
        qcow2.unlink(missing_ok=True)
    t3 = time.monotonic()
    path = lab.site_a.images_dir / record["id"]
    return Image(size, kind, store, virtual, data, ratio, record["id"], record["checksum"], path,
                 path.stat().st_size, allocated_bytes(path),
                 {"make_s": round(t1 - t0, 1), "zstd_s": round(t2 - t1, 1), "upload_s": round(t3 - t2, 1)})

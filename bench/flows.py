"""The two reference flows: the copy ceiling and the old tool's flow, re-enacted with the same tools.

ceiling: the image file's allocated bytes (SEEK_DATA/SEEK_HOLE extents), read once and piped
         into `ssh HEAD 'cat > /dev/null'`: the least that must cross, at ssh's speed.
legacy:  what the old tool did: `glance image-list`, then one `ssh HEAD glance image-show ID`
         per destination image to compare checksums (dedupe); plain `rsync` of the whole file
         (raw, unsparse, as it sent it) to the head node's /tmp; then there
         `glance image-create ... < FILE` (a second full copy on the far side) and `rm`.
Both apply the same cap as migratio: rsync --bwlimit (KiB/s), or pacing the pipe into ssh.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from bench.destinations import Destination, remote
from bench.measure import Bytes, TreeSampler
from migratio.openstack.stream import Pacer  # the same rate limit as migratio's stream (no saved-up credit)

CHUNK = 1024 * 1024
UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def data_extents(fd: int, size: int):
    """(offset, length) of the file's data extents (holes skipped), via SEEK_DATA/SEEK_HOLE."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end


def allocated_bytes(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(length for _, length in data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def ceiling(dest: Destination, path: Path, cap_bytes: float | None, env: dict, cipher: str,
            counter: Bytes, logdir: Path) -> dict:
    """Stream the data extents of `path` into ssh 'cat > /dev/null' on the head node."""
    with open(logdir / "ceiling.stderr", "wb") as err, counter:
        start = time.monotonic()
        proc = subprocess.Popen(dest.ssh_argv("cat > /dev/null", cipher=cipher), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        pacer, fd, sent = Pacer(cap_bytes), os.open(path, os.O_RDONLY), 0
        try:
            with TreeSampler(proc.pid) as memory:
                for offset, length in data_extents(fd, os.fstat(fd).st_size):
                    end = offset + length
                    while offset < end:
                        block = os.pread(fd, min(CHUNK, end - offset), offset)
                        proc.stdin.write(block)
                        offset += len(block)
                        sent += len(block)
                        pacer.wrote(len(block))
                proc.stdin.close()
                proc.wait(3600)
        finally:
            os.close(fd)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ceiling: ssh exited {proc.returncode}, see {logdir / 'ceiling.stderr'}")
    return {"wall_s": wall, "payload_bytes": sent, **memory.result(), **counter.result()}


def legacy(dest: Destination, path: Path, disk_format: str, checksum: str, cap_kib: int | None,
           env: dict, counter: Bytes, logdir: Path) -> dict:
    """The old tool's flow; returns timings of its three phases and the id it registered."""
    name = f"legacy-{uuid.uuid4().hex[:8]}"
    remote_file = dest.tmp_dir / f"{name}.{disk_format}"
    with counter:
        start = time.monotonic()
        found, calls = legacy_dedupe(dest, checksum, env)
        t_dedupe = time.monotonic()
        if found:
            raise RuntimeError(f"legacy: the destination already holds the image as {found}")
        argv = ["rsync", "-e", shlex.join(dest.ssh_argv()[:-1])]
        if cap_kib:
            argv.append(f"--bwlimit={cap_kib}")
        argv += ["--", str(path), f"{dest.user}@{dest.host}:{remote_file}"]
        with open(logdir / "legacy-rsync.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            with TreeSampler(proc.pid) as memory:
                proc.wait(6 * 3600)
        if proc.returncode != 0:
            raise RuntimeError(f"legacy: rsync exited {proc.returncode}, see {logdir / 'legacy-rsync.log'}")
        t_transfer = time.monotonic()
        quoted = shlex.quote(str(remote_file))
        line = (dest.with_env("glance", "image-create", f"--name={name}", f"--disk-format={disk_format}",
                              "--container-format=bare")
                + f" < {quoted}; status=$?; rm -f {quoted}; exit $status")
        out = remote(dest, line, timeout=6 * 3600, env=env).stdout
        end = time.monotonic()
    image_id = next(iter(UUID_RE.findall(out)), None)
    return {"wall_s": end - start, "dedupe_s": t_dedupe - start, "dedupe_calls": calls,
            "transfer_s": t_transfer - t_dedupe, "register_s": end - t_transfer,
            "payload_bytes": os.path.getsize(path), **memory.result(),
            "dest_image_id": image_id, **counter.result()}


def legacy_dedupe(dest: Destination, checksum: str, env: dict) -> tuple[str | None, int]:
    """image-list, then image-show per image over its own ssh connection, as the old tool did.

    Returns (id of a copy with the same checksum or None, number of remote calls).
    """
    calls = 1
    for image_id in legacy_list(dest, env):
        calls += 1
        if legacy_checksum(dest, image_id, env) == checksum:
            return image_id, calls
    return None, calls


def legacy_list(dest: Destination, env: dict) -> list[str]:
    return UUID_RE.findall(remote(dest, dest.with_env("glance", "image-list"), env=env).stdout)


def legacy_checksum(dest: Destination, image_id: str, env: dict) -> str | None:
    shown = remote(dest, dest.with_env("glance", "image-show", image_id), env=env).stdout
    match = re.search(r"\|\s*checksum\s*\|\s*([0-9a-f]+)\s*\|", shown)
    return match.group(1) if match else None


def ingest_floor(dest: Destination, path: Path, disk_format: str, env: dict) -> dict:
    """What the destination Glance alone needs: `glance image-create --file` of a copy already on
    the head node (copied beforehand, not timed), over one ssh command; the image is then deleted."""
    staged = dest.tmp_dir / f"floor-{uuid.uuid4().hex[:8]}.{disk_format}"
    shutil.copyfile(path, staged)  # the head node shares this machine's disk
    try:
        start = time.monotonic()
        out = remote(dest, dest.with_env("glance", "image-create", f"--name={staged.stem}",
                                         f"--disk-format={disk_format}", "--container-format=bare",
                                         f"--file={staged}"), env=env).stdout
        wall = time.monotonic() - start
    finally:
        staged.unlink(missing_ok=True)
    image_id = next(iter(UUID_RE.findall(out)), None)
    if image_id:
        dest.api().delete_image(image_id)
    return {"wall_s": wall, "payload_bytes": os.path.getsize(path)}

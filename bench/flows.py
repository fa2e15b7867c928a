"""The two reference flows: the copy ceiling and the old tool's flow, re-enacted with the same tools.

ceiling: the image file's allocated bytes (SEEK_DATA/SEEK_HOLE extents), read once and piped
         into `ssh HEAD 'cat > /dev/null'`: the least that must cross, at ssh's speed.
legacy:  what the old tool's two scripts did (openstack2openstack-transfer.sh, -register.sh):
         a dedupe pass (source `glance image-list`; one ssh running `glance image-list` and one
         `glance image-show` per destination image; source `glance image-show` for the checksum);
         plain `rsync` of the Glance store file as it is (a qcow2 stays qcow2, a raw file is sent
         whole, no -S) to the head node's /tmp/<uuid>; the same dedupe pass again (the register
         script's); then there `glance image-create ... < /tmp/<uuid>` and `rm`.
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
from migratio.local.sparse import data_extents
from migratio.openstack.stream import Pacer  # the same rate limit as migratio's stream (no saved-up credit)

CHUNK = 1024 * 1024
UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
CHECKSUM_RE = re.compile(r"\|\s*checksum\s*\|\s*([0-9a-f]+)\s*\|")


def allocated_bytes(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(end - start for start, end in data_extents(fd, os.fstat(fd).st_size))
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
                for offset, end in data_extents(fd, os.fstat(fd).st_size):
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


def legacy(dest: Destination, source_env: Path, image_id: str, path: Path, disk_format: str,
           cap_kib: int | None, env: dict, counter: Bytes, logdir: Path) -> dict:
    """The old tool's two scripts on the stored file `path` (see ASSUMPTIONS in bench/suite.py)."""
    remote_file = dest.tmp_dir / image_id  # the old scripts' /tmp/<uuid>
    with counter:
        start = time.monotonic()
        found, runs = legacy_dedupe(dest, source_env, image_id, env)  # transfer script
        t_dedupe = time.monotonic()
        if found:
            raise RuntimeError(f"legacy: the destination already holds image {image_id}")
        memory = legacy_rsync(dest, path, remote_file, cap_kib, env, logdir)
        t_transfer = time.monotonic()
        found, runs2 = legacy_dedupe(dest, source_env, image_id, env)  # register script, again
        t_dedupe2 = time.monotonic()
        quoted = shlex.quote(str(remote_file))
        line = (dest.with_env("glance", "image-create", f"--name=legacy-{image_id[:8]}",
                              f"--disk-format={disk_format}", "--container-format=bare",
                              f"--property=source_uuid={image_id}", "--property=source_cs=site-a")
                + f" < {quoted}; status=$?; rm -f {quoted}; exit $status")
        out = remote(dest, line, timeout=6 * 3600, env=env).stdout
        end = time.monotonic()
    return {"wall_s": end - start, "dedupe_s": t_dedupe - start + t_dedupe2 - t_transfer,
            "dedupe_glance_runs": runs + runs2, "dedupe_loops": 2,
            "transfer_s": t_transfer - t_dedupe, "register_s": end - t_dedupe2, "format": disk_format,
            "payload_bytes": os.path.getsize(path), **memory,
            "dest_image_id": next(iter(UUID_RE.findall(out)), None), **counter.result()}


def legacy_rsync(dest: Destination, path: Path, remote_file: Path, cap_kib: int | None, env: dict,
                 logdir: Path) -> dict:
    """Plain rsync of the stored file, as it is (no -S, no -z: transfer.sh line 58)."""
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
    return memory.result()


# the old scripts' remote loop (transfer.sh lines 42-47, register.sh lines 42-47), one ssh session
SHOW_CHECKSUM = "glance image-show ${remote_image_uuid} | grep checksum | awk '{print $4}'"
REMOTE_CHECKSUMS = ("glance image-list | head -n -1 | tail -n +4 | awk '{print $2}' | "
                    f"while read remote_image_uuid; do {SHOW_CHECKSUM}; done")


def legacy_dedupe(dest: Destination, source_env: Path, image_id: str, env: dict) -> tuple[bool, int]:
    """One of the old scripts' dedupe passes: source image-list, one ssh running image-list and
    image-show per destination image, source image-show for the checksum (lines 34-53).

    Returns (the checksum was found on the destination, glance CLI runs)."""
    listed = local_glance(source_env, "image-list", env)
    if image_id not in listed:
        raise RuntimeError(f"legacy: image {image_id} is not in site-a's image-list")
    prefix = f". {shlex.quote(str(dest.env_file))} && "
    remote_sums = remote(dest, prefix + REMOTE_CHECKSUMS, env=env).stdout.split()
    shown = local_glance(source_env, "image-show", env, image_id)
    match = CHECKSUM_RE.search(shown)
    return bool(match) and match.group(1) in remote_sums, 3 + len(remote_sums)


def local_glance(source_env: Path, command: str, env: dict, *args: str) -> str:
    """The glance CLI on the worker's machine against site-a (the old scripts' ~/.creds)."""
    line = f". {shlex.quote(str(source_env))} && " + shlex.join(["glance", command, *args])
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True, env=env,
                          timeout=600).stdout


def legacy_list(dest: Destination, env: dict) -> list[str]:
    return UUID_RE.findall(remote(dest, dest.with_env("glance", "image-list"), env=env).stdout)


def remote_checksums(dest: Destination, ids: list[str], env: dict) -> list[str]:
    """The old scripts' loop body (`glance image-show ID | grep checksum`) for `ids`, in one ssh session."""
    loop = f"for remote_image_uuid in {' '.join(shlex.quote(i) for i in ids)}; do {SHOW_CHECKSUM}; done"
    return remote(dest, f". {shlex.quote(str(dest.env_file))} && {loop}", env=env).stdout.split()


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

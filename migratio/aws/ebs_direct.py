"""Write a raw disk image straight into a new EBS snapshot with the EBS direct APIs.

Only blocks holding data are sent: the raw file's holes are found with SEEK_DATA/SEEK_HOLE
and all-zero 512 KiB blocks inside data extents are skipped too (a snapshot block that was
never written reads as zeros). At most `in_flight` blocks are in memory at any time.
"""

import base64
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from migratio.aws.clients import AwsClients, error_code, wait_for
from migratio.errors import ConfigError, PermanentError, StepError, TransientError
from migratio.local.sparse import block_ranges, data_extents  # noqa: F401 (data_extents: for callers)
from migratio.units import GiB

BLOCK_SIZE = 512 * 1024  # the EBS direct APIs' only block size
# An EBS snapshot may hold 64 TiB, but an AMI's root snapshot must become a volume, and gp2/gp3
# volumes hold at most 16 TiB: a larger disk could be snapshotted yet never booted.
MAX_VOLUME_GIB = 16 * 1024
ZERO_BLOCK = bytes(BLOCK_SIZE)
TOKEN_ATTEMPTS = 5
PROGRESS_INTERVAL = 1.0  # seconds between progress reports


@dataclass
class BlockStats:
    blocks_total: int = 0  # 512 KiB blocks in the volume
    blocks_allocated: int = 0  # blocks touching data extents of the raw file (holes excluded)
    blocks_zero: int = 0  # allocated blocks found all-zero and skipped
    blocks_sent: int = 0
    seconds: float = 0.0

    @property
    def bytes_sent(self) -> int:
        return self.blocks_sent * BLOCK_SIZE


def volume_gib(size: int) -> int:
    """Snapshot size in GiB for a disk of `size` bytes (rounded up, at least 1)."""
    return max(1, -(-size // GiB))


def check_size(size: int, what: str) -> int:
    """The volume size in GiB; a PermanentError when an EBS volume cannot hold the disk."""
    gib = volume_gib(size)
    if gib > MAX_VOLUME_GIB:
        raise PermanentError(f"{what} is {gib} GiB: larger than the {MAX_VOLUME_GIB // 1024} TiB an EBS "
                             f"volume can hold, so it cannot become an AMI")
    return gib


def allocated_ranges(fd: int, size: int) -> Iterator[range]:
    """Ranges of indexes of the 512 KiB blocks touching a data extent, ascending, each block once."""
    return block_ranges(fd, size, BLOCK_SIZE)


def allocated_blocks(fd: int, size: int) -> Iterator[int]:
    for blocks in allocated_ranges(fd, size):
        yield from blocks


def read_block(fd: int, index: int) -> bytes:
    """One block, zero-padded to 512 KiB at the end of the file."""
    data = os.pread(fd, BLOCK_SIZE, index * BLOCK_SIZE)
    return data if len(data) == BLOCK_SIZE else data + bytes(BLOCK_SIZE - len(data))


def start_snapshot(aws: AwsClients, gib: int, token: str, description: str,
                   tags: list[dict[str, str]], log: logging.LoggerAdapter | logging.Logger) -> str:
    """StartSnapshot with a ClientToken stable per job: a retried job resumes its pending snapshot.

    If the token's snapshot is no longer pending (an earlier attempt's failure cleanup deleted it)
    or conflicts, the next token of the job is used.
    """
    for attempt in range(TOKEN_ATTEMPTS):
        try:
            answer = aws.ebs.start_snapshot(VolumeSize=gib, ClientToken=f"{token}-{attempt}" if attempt else token,
                                            Description=description[:255], Tags=tags)
        except StepError as exc:
            if error_code(exc) == "ConflictException" and attempt < TOKEN_ATTEMPTS - 1:
                log.warning("StartSnapshot token %d refused (%s); trying the next one", attempt, exc)
                continue
            raise
        if answer.get("Status", "pending") == "pending":
            return answer["SnapshotId"]
        log.warning("snapshot %s of an earlier attempt is %s; starting a new one",
                    answer["SnapshotId"], answer.get("Status"))
    raise PermanentError(f"could not start a new EBS snapshot: the job's {TOKEN_ATTEMPTS} ClientTokens all belong to "
                         f"earlier snapshots; submit the migration again as a new job")


class BlockWriter:
    """Sends a raw file's data blocks to a pending snapshot, `in_flight` PutSnapshotBlock at once."""

    def __init__(self, ebs: Any, snapshot_id: str, in_flight: int,
                 progress: Callable[[int, int], None] | None = None, clock: Callable[[], float] = time.monotonic):
        if in_flight < 1:
            raise ConfigError(f"key 'blocks_in_flight' must be at least 1, got {in_flight}")
        self.ebs, self.snapshot_id, self.in_flight = ebs, snapshot_id, in_flight
        self.progress, self.clock = progress, clock
        self.slots = threading.BoundedSemaphore(in_flight)
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.stats = BlockStats()
        self.done_blocks = 0  # allocated blocks sent or skipped

    def write(self, path: Path) -> BlockStats:
        try:
            return self._write(path)
        except OSError as exc:
            raise PermanentError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _write(self, path: Path) -> BlockStats:
        start = self.clock()
        with open(path, "rb") as f, ThreadPoolExecutor(self.in_flight, thread_name_prefix="ebs-put") as pool:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            self.stats.blocks_total = -(-size // BLOCK_SIZE)
            self.stats.blocks_allocated = total = sum(map(len, allocated_ranges(fd, size)))
            last_report = self.clock()
            for index in allocated_blocks(fd, size):
                self.slots.acquire()  # a slot per block held in memory
                if self.errors:
                    self.slots.release()
                    break
                data = read_block(fd, index)
                if data == ZERO_BLOCK:
                    self.slots.release()
                    self._count(zero=True)
                else:
                    pool.submit(self._put, index, data).add_done_callback(self._finished)
                if self.progress and self.clock() - last_report >= PROGRESS_INTERVAL:
                    last_report = self.clock()
                    self.progress(self.done_blocks * BLOCK_SIZE, total * BLOCK_SIZE)
        if self.errors:
            raise self.errors[0]
        self.stats.seconds = self.clock() - start
        if self.progress:
            self.progress(self.done_blocks * BLOCK_SIZE, self.stats.blocks_allocated * BLOCK_SIZE)
        return self.stats

    def _put(self, index: int, data: bytes) -> None:
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
        self.ebs.put_snapshot_block(SnapshotId=self.snapshot_id, BlockIndex=index, BlockData=data,
                                    DataLength=BLOCK_SIZE, Checksum=checksum, ChecksumAlgorithm="SHA256")

    def _finished(self, future: Future) -> None:
        self.slots.release()
        error = future.exception()
        if error is not None:
            with self.lock:
                self.errors.append(error)
        else:
            self._count(zero=False)

    def _count(self, zero: bool) -> None:
        with self.lock:
            self.done_blocks += 1
            if zero:
                self.stats.blocks_zero += 1
            else:
                self.stats.blocks_sent += 1


def complete_snapshot(aws: AwsClients, snapshot_id: str, changed_blocks: int, *, interval: float,
                      timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """CompleteSnapshot, then wait until EC2 reports the snapshot completed."""
    aws.ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=changed_blocks)

    def state() -> str | None:
        snapshot = aws.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        if snapshot["State"] == "error":
            raise TransientError(f"EBS snapshot {snapshot_id} failed on AWS: "
                                 f"{snapshot.get('StateMessage') or 'no reason given'}")
        return snapshot["State"] if snapshot["State"] == "completed" else None

    wait_for(state, what=f"EBS snapshot {snapshot_id} to complete", interval=interval, timeout=timeout, sleep=sleep)


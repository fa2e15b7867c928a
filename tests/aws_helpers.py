"""Helpers for the AWS tests: raw test disks with known data, holes and zero blocks; a filled Context."""

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from migratio.aws.clients import AwsClients
from migratio.aws.ebs_direct import BLOCK_SIZE
from migratio.openstack.glance import SourceImage
from migratio.pipeline.context import Context
from tests.builders import given_services, make_context


@dataclass
class Disk:
    path: Path
    size: int
    data_blocks: set[int]  # blocks holding non-zero bytes
    zero_blocks: set[int]  # blocks allocated on disk but holding only zeros


def make_sparse_raw(path: Path, size: int = 6 * 1024 * 1024 + 100 * 1024) -> Disk:
    """A sparse raw disk: full, partial and tail data blocks, an allocated all-zero block, holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        fd = f.fileno()
        os.pwrite(fd, os.urandom(BLOCK_SIZE), 1 * BLOCK_SIZE)  # a whole block of data
        os.pwrite(fd, os.urandom(4096), 4 * BLOCK_SIZE + 8192)  # 4 KiB inside a block
        os.pwrite(fd, bytes(BLOCK_SIZE), 6 * BLOCK_SIZE)  # written zeros: allocated, all-zero
        os.pwrite(fd, os.urandom(2048), 7 * BLOCK_SIZE - 1024)  # straddles blocks 6 and 7
        os.pwrite(fd, os.urandom(1000), size - 1000)  # the partial last block
    last = (size - 1) // BLOCK_SIZE
    return Disk(path, size, {1, 4, 6, 7, last}, set())


def make_zero_extent_raw(path: Path) -> Disk:
    """Data in blocks 0 and 3, written zeros in blocks 1-2, a hole after."""
    size = 8 * BLOCK_SIZE
    with open(path, "wb") as f:
        f.truncate(size)
        os.pwrite(f.fileno(), os.urandom(BLOCK_SIZE), 0)
        os.pwrite(f.fileno(), bytes(2 * BLOCK_SIZE), BLOCK_SIZE)
        os.pwrite(f.fileno(), os.urandom(100), 3 * BLOCK_SIZE + 5)
    return Disk(path, size, {0, 3}, {1, 2})


@dataclass
class AwsJob:
    ctx: Context
    image_id: str
    clients: list[AwsClients] = field(default_factory=list)


def aws_context(tmp_path: Path, site, payload: Path | None, *, name: str = "test image",
                properties: dict | None = None, virtual_size: int | None = None,
                payload_format: str = "raw", connect=None) -> AwsJob:
    """A Context as locate/inspect/convert would leave it, for an AWS site."""
    image_id = str(uuid.uuid4())
    made: list[AwsClients] = []

    def aws(options):
        clients = (connect or AwsClients.connect)(options)
        made.append(clients)
        return clients

    ctx = make_context(tmp_path, site, services=given_services(aws=aws), job_id=f"job-{uuid.uuid4().hex[:8]}",
                       image_id=image_id, workdir=tmp_path / "work" / "job")
    size = payload.stat().st_size if payload else 0
    ctx.image = SourceImage(id=image_id, name=name, disk_format=payload_format, container_format="bare", size=size,
                            properties=properties or {}, path=payload, virtual_size=virtual_size or size)
    ctx.payload, ctx.payload_format = payload, payload_format
    return AwsJob(ctx, image_id, made)

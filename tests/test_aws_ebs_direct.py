"""EBS direct snapshot writes: only non-zero data crosses, blocks and checksums land intact.

Against moto_server (its EBS direct APIs keep the blocks: list/get them back), plus in-process
fakes for the concurrency bound and the failure path.
"""

import base64
import hashlib
import os
import threading
import time

import pytest

from migratio.aws import ebs_direct
from migratio.aws.clients import AwsClients
from migratio.aws.ebs_direct import BLOCK_SIZE, BlockWriter
from migratio.errors import PermanentError, TransientError
from tests.aws_helpers import make_sparse_raw, make_zero_extent_raw


def snapshot_blocks(moto_server, snapshot_id: str) -> dict[int, bytes]:
    ebs = moto_server.client("ebs")
    listing = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    result = {}
    for block in listing["Blocks"]:
        answer = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"],
                                        BlockToken=block["BlockToken"])
        data = answer["BlockData"].read()
        assert answer["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert answer["ChecksumAlgorithm"] == "SHA256"
        result[block["BlockIndex"]] = data
    return result


def file_block(path, index: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(index * BLOCK_SIZE)
        data = f.read(BLOCK_SIZE)
    return data + bytes(BLOCK_SIZE - len(data))


def test_extents_and_allocated_blocks_follow_holes(tmp_path):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    with open(disk.path, "rb") as f:
        extents = list(ebs_direct.data_extents(f.fileno(), disk.size))
        blocks = list(ebs_direct.allocated_blocks(f.fileno(), disk.size))
    assert extents and all(start < end for start, end in extents)
    assert blocks == sorted(set(blocks)), "each block once, ascending"
    assert set(blocks) >= disk.data_blocks
    assert 0 not in blocks and 2 not in blocks, "holes are not read"


@pytest.mark.moto
@pytest.mark.parametrize("in_flight", [1, 4])
def test_snapshot_holds_exactly_the_non_zero_blocks(moto_server, moto_site, aws_env, tmp_path, in_flight):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    aws = AwsClients.connect(moto_site(blocks_in_flight=in_flight).options)
    snapshot = ebs_direct.start_snapshot(aws, ebs_direct.volume_gib(disk.size), f"token-{os.getpid()}-{in_flight}",
                                         "test", [{"Key": "k", "Value": "v"}], _log())
    reports = []
    stats = BlockWriter(aws.ebs, snapshot, in_flight, progress=lambda d, t: reports.append((d, t))).write(disk.path)
    ebs_direct.complete_snapshot(aws, snapshot, stats.blocks_sent, interval=1, timeout=120)

    blocks = snapshot_blocks(moto_server, snapshot)
    expected = {i for i in range(stats.blocks_total) if any(file_block(disk.path, i))}
    assert expected == disk.data_blocks
    assert set(blocks) == expected
    for index, data in blocks.items():
        assert data == file_block(disk.path, index)
    assert stats.blocks_sent == len(expected)
    assert stats.blocks_total == -(-disk.size // BLOCK_SIZE)
    assert reports[-1] == (stats.blocks_allocated * BLOCK_SIZE, stats.blocks_allocated * BLOCK_SIZE)
    state = moto_server.client("ec2").describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"]
    assert state == "completed"


@pytest.mark.moto
def test_all_zero_blocks_inside_data_extents_are_not_sent(moto_server, moto_site, aws_env, tmp_path):
    disk = make_zero_extent_raw(tmp_path / "zeros.raw")
    aws = AwsClients.connect(moto_site().options)
    snapshot = ebs_direct.start_snapshot(aws, 1, f"zero-{os.getpid()}", "test", [], _log())
    stats = BlockWriter(aws.ebs, snapshot, 2).write(disk.path)
    assert set(snapshot_blocks(moto_server, snapshot)) == disk.data_blocks
    assert stats.blocks_zero == len(disk.zero_blocks)
    assert stats.blocks_allocated == len(disk.data_blocks | disk.zero_blocks)
    assert stats.blocks_sent == len(disk.data_blocks)


class CountingEbs:
    """In-process stand-in recording how many PutSnapshotBlock calls overlap."""

    def __init__(self, fail_at: int | None = None):
        self.lock = threading.Lock()
        self.active = self.peak = 0
        self.indexes: list[int] = []
        self.fail_at = fail_at

    def put_snapshot_block(self, **params):
        assert len(params["BlockData"]) == params["DataLength"] == BLOCK_SIZE
        assert params["ChecksumAlgorithm"] == "SHA256"
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.indexes.append(params["BlockIndex"])
        time.sleep(0.02)  # keep calls overlapping; no assertion depends on timing
        with self.lock:
            self.active -= 1
        if params["BlockIndex"] == self.fail_at:
            raise TransientError("AWS PutSnapshotBlock failed, will retry: InternalError")


def dense_disk(path, blocks: int):
    with open(path, "wb") as f:
        for _ in range(blocks):
            f.write(os.urandom(BLOCK_SIZE))
    return path


@pytest.mark.parametrize("in_flight", [1, 3])
def test_never_more_blocks_in_flight_than_configured(tmp_path, in_flight):
    ebs = CountingEbs()
    stats = BlockWriter(ebs, "snap-1", in_flight).write(dense_disk(tmp_path / "d.raw", 12))
    assert stats.blocks_sent == 12 and sorted(ebs.indexes) == list(range(12))
    assert 1 <= ebs.peak <= in_flight


def test_a_failed_block_stops_the_writer_with_its_error(tmp_path):
    ebs = CountingEbs(fail_at=2)
    with pytest.raises(TransientError, match="InternalError"):
        BlockWriter(ebs, "snap-1", 2).write(dense_disk(tmp_path / "d.raw", 40))
    assert len(ebs.indexes) < 40, "no more blocks are read once one failed"


def test_disk_larger_than_an_ebs_volume_is_refused():
    assert ebs_direct.check_size(16 * 1024 ** 4, "image x") == 16 * 1024
    with pytest.raises(PermanentError, match=r"image x is 16385 GiB: larger than the 16 TiB"):
        ebs_direct.check_size(16 * 1024 ** 4 + 1, "image x")
    assert ebs_direct.volume_gib(1) == 1


def _log():
    import logging

    return logging.getLogger("test")


def test_a_deleted_snapshot_of_an_earlier_attempt_moves_to_the_next_token(moto_site, aws_env):
    """moto ignores StartSnapshot's ClientToken, so idempotency is shown with botocore's Stubber."""
    from botocore.stub import ANY, Stubber

    aws = AwsClients.connect(moto_site().options)
    answer = {"SnapshotId": "snap-0123456789abcdef0", "VolumeSize": 1, "BlockSize": BLOCK_SIZE}
    request = {"VolumeSize": 1, "Description": "d", "Tags": [], "ClientToken": ANY}
    with Stubber(aws.ebs.raw) as stub:
        stub.add_response("start_snapshot", {**answer, "Status": "completed"}, {**request, "ClientToken": "tok"})
        stub.add_client_error("start_snapshot", "ConflictException", http_status_code=409,
                              expected_params={**request, "ClientToken": "tok-1"})
        stub.add_response("start_snapshot", {**answer, "SnapshotId": "snap-0fedcba9876543210", "Status": "pending"},
                          {**request, "ClientToken": "tok-2"})
        assert ebs_direct.start_snapshot(aws, 1, "tok", "d", [], _log()) == "snap-0fedcba9876543210"
        stub.assert_no_pending_responses()

"""Several ssh streams at once (`streams: N|auto`): on the lab, a sparse raw payload sent in ranges
over real sshd into the lab's Glance arrives byte for byte, and the head node keeps nothing."""

import hashlib
import itertools
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from migratio.openstack import ranges
from migratio.openstack.staging_space import STAGED_BLOCK
from tests.fixtures.lab import staged


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_auto_picks_enough_streams_for_the_window_per_round_trip():
    assert ranges.auto_streams(0.0002, None) == 1  # ~0 RTT: one stream is never the limit
    assert ranges.auto_streams(0.05, None) == 3  # 1 Gbit/s x 50 ms / 2 MiB
    assert ranges.auto_streams(0.05, 10 * 1024 * 1024) == 1  # a 10 MiB/s cap: one stream carries it
    assert ranges.auto_streams(2.0, None) == ranges.AUTO_MAX


def test_plan_covers_the_data_extents_in_whole_blocks(tmp_path):
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as f:
        f.truncate(100 * 1024 * 1024 + 5)
        f.seek(3 * 1024 * 1024 + 1)
        f.write(b"x" * (40 * 1024 * 1024))  # crosses a range boundary
        f.seek(100 * 1024 * 1024)
        f.write(b"tail!")
    plan = ranges.plan(path)
    assert all(r.start % STAGED_BLOCK == 0 and r.end - r.start <= ranges.RANGE_BYTES for r in plan)
    assert plan[0].start == 3 * 1024 * 1024 and plan[-1].end == path.stat().st_size
    assert all(a.end <= b.start for a, b in itertools.pairwise(plan))
    data = path.read_bytes()
    covered = bytearray(len(data))
    for r in plan:
        covered[r.start:r.end] = data[r.start:r.end]
    assert bytes(covered) == data  # what the plan leaves out is holes


def test_a_range_whose_bytes_end_early_is_never_marked_complete(tmp_path):
    """The head node's writer line, run here by sh: a whole range is written at its offset, marked
    and acknowledged; one cut short (no trailer after its bytes) fails the line and gets no marker."""
    staged, mib = tmp_path / "img.raw", 1024 * 1024
    subprocess.run(ranges.prepare_argv(str(staged), 4 * mib), check=True)
    data = os.urandom(mib)
    whole = f"{mib} {2 * mib}\n".encode() + data + f"{ranges.END_MARK} {mib}\n".encode()
    cut = f"{3 * mib} {4 * mib}\n".encode() + data[:1000]
    proc = subprocess.run(["sh", "-c", ranges.writer_line(str(staged))], input=whole + cut, capture_output=True)
    assert proc.returncode == ranges.SHORT_RANGE
    assert proc.stdout.decode().splitlines() == [ranges.READY_MARK, f"{ranges.DONE_MARK} {mib} {2 * mib}"]
    assert os.listdir(ranges.marks_dir(str(staged))) == [f"{mib}-{2 * mib}"]
    content = staged.read_bytes()
    assert len(content) == 4 * mib and content[mib:2 * mib] == data and content[:mib] == bytes(mib)


@pytest.mark.lab
@pytest.mark.parametrize("streams", [3, "auto"])
def test_sparse_raw_payload_arrives_byte_for_byte(lab, glance_image, migrate_on_lab, tmp_path, streams):
    img = glance_image(virtual_size="256M", data_mib=24)
    out = migrate_on_lab(img.id, job_id=str(uuid.uuid4()), streams=streams, disk_format="raw")
    assert out.status == "finished", out.exc_string
    dest_id = out.result["dest_image_id"]
    dest = lab.site_b.api().get_image(dest_id)
    assert (dest["status"], dest["disk_format"], dest["size"]) == ("active", "raw", 256 * 1024 * 1024)
    expected = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(img.path), str(expected)], check=True)
    assert sha256(lab.site_b.api().download(dest_id, tmp_path / "got.raw")) == sha256(expected)
    transferred = next(ln for ln in out.lines if ln.startswith("Image transferred ("))
    assert "streamed into Glance on site-b" in transferred
    if streams == 3:
        assert "over 3 ssh streams, 24 MiB sent" in transferred  # the data extents only, no holes
    assert out.result["streams"] in range(1, ranges.AUTO_MAX + 1)  # what auto chose (by the RTT), in the result
    assert not staged(lab, img.id)  # neither the staged file nor its markers


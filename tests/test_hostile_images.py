"""Hostile images against the real qemu-img/qemu-io: a map that would fill memory, a huge
virtual size and the staged copy of a sparse disk, content that is not its Glance disk_format,
multi-file VMDKs (issue 14, 9-12). tests/test_hostile_images_lab.py runs them on the lab."""

import hashlib
import logging
import os
import struct
import subprocess
import tracemalloc
import uuid
from pathlib import Path

import pytest

from migratio.conf.sites import OpenStackOptions, Site
from migratio.errors import ConfigError, UnsafeImage
from migratio.local import qemu
from migratio.local.commands import Commands
from migratio.openstack import stream
from migratio.openstack.glance import SourceImage
from migratio.openstack.glance_protocol import StreamCommands
from migratio.pipeline.context import Context
from migratio.pipeline.services import Services
from migratio.pipeline.status import DictMeta, JobInfo
from migratio.steps import common
from tests.builders import config_factory

KiB, MiB, GiB, TiB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4
DATA = 64 * KiB  # real data at the start of every hostile qcow2


def qemu_img(*args) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def hostile_qcow2(path: Path, pairs: int) -> Path:
    """512-byte clusters alternating zero-flagged / unallocated after DATA bytes of data: two
    extents in `qemu-img map` per 1 KiB of virtual disk, at 8 bytes of L2 table each."""
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", path, DATA + pairs * KiB)
    script = [f"write -P 0x5a 0 {DATA}"] + [f"write -z {DATA + i * KiB} 512" for i in range(pairs)]
    subprocess.run(["qemu-io", "-t", "unsafe", "-f", "qcow2", str(path)], input="\n".join(script) + "\n",
                   check=True, capture_output=True, text=True)
    return path


def map_json_bytes(path: Path) -> int:
    """How much JSON `qemu-img map` prints for the image (counted as it streams by)."""
    proc = subprocess.Popen(["qemu-img", "map", "--output=json", str(path)], stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 16):
        total += len(chunk)
    assert proc.wait() == 0
    return total


def peak_while(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def commands():
    return Commands(logging.getLogger("test.hostile"))


@pytest.fixture
def inspect(tmp_path):
    """inspect(path, disk_format, **config) -> the Inspect step run on that file as a Glance image."""

    def run(path: Path, disk_format: str, **config_overrides) -> SourceImage:
        config = config_factory(tmp_path, **config_overrides)
        site = Site("site-b", "openstack", tmp_path / "sites/site-b.conf", OpenStackOptions(host="h", user="u"))
        services = Services(source_glance=None, glance=None, remote=None, aws=None, nova=None)
        ctx = Context(JobInfo("job-1", path.name, "site-a", "site-b"), config, site, services,
                      tmp_path / "work", DictMeta(), _Lines())
        ctx.image = SourceImage(path.name, "hostile", disk_format, "bare", path.stat().st_size, path=path)
        common.Inspect().run(ctx)
        return ctx.image

    return run


class _Lines:
    def emit(self, job, text):
        pass


def store_file(tmp_path: Path) -> Path:
    """A path named like a Glance store file (the image id)."""
    store = tmp_path / "images"
    store.mkdir(exist_ok=True)
    return store / str(uuid.uuid4())


def created(tmp_path: Path, fmt: str, size: str, *options: str) -> Path:
    """`qemu-img create` of a store file."""
    path = store_file(tmp_path)
    qemu_img("create", "-f", fmt, *options, path, size)
    return path


def refusal(inspect, path: Path, disk_format: str, **config) -> str:
    with pytest.raises(UnsafeImage) as caught:
        inspect(path, disk_format, **config)
    return str(caught.value)


# ---- 9. qemu-img map output is never held whole in memory


def test_map_of_a_512_byte_cluster_image_keeps_memory_flat(commands, tmp_path):
    small = hostile_qcow2(tmp_path / "small.qcow2", 20_000)
    large = hostile_qcow2(tmp_path / "large.qcow2", 80_000)
    assert large.stat().st_size < 2 * MiB and map_json_bytes(large) > 7 * MiB  # small file, huge map
    small_n, small_peak = peak_while(lambda: qemu.allocated_bytes(commands, small, "qcow2"))
    large_n, large_peak = peak_while(lambda: qemu.allocated_bytes(commands, large, "qcow2"))
    assert small_n == large_n == DATA  # the zero and unallocated clusters are not data
    assert large_peak < 2 * MiB, f"peak {large_peak} bytes while mapping"
    assert large_peak < small_peak + 256 * KiB  # 4x the extents, not 4x the memory


def test_map_runs_under_the_same_limits_as_info(commands, tmp_path, caplog):
    image = hostile_qcow2(tmp_path / "h.qcow2", 10)
    with caplog.at_level(logging.INFO, logger="test.hostile"):
        qemu.allocated_bytes(commands, image, "qcow2")
        qemu.info(commands, image, "qcow2")
    runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run: ")]
    maps = [line for line in runs if " qemu-img map " in line]
    infos = [line for line in runs if " qemu-img info " in line]
    assert maps and infos
    limits = " ".join(qemu.INFO_LIMITS)
    assert all(f"prlimit {limits} -- qemu-img" in line for line in maps + infos)


def test_map_stopped_by_its_limits_is_a_refused_image(commands, tmp_path, monkeypatch):
    image = hostile_qcow2(tmp_path / "h.qcow2", 2000)
    monkeypatch.setattr(qemu, "INFO_LIMITS", ("--as=8388608",))  # qemu-img cannot even start in 8 MiB
    with pytest.raises(UnsafeImage, match="h.qcow2: qemu-img map failed"):
        qemu.allocated_bytes(commands, image, "qcow2")


def test_info_output_is_bounded_too(commands, tmp_path, monkeypatch):
    """qemu-img info lists e.g. every internal snapshot of a qcow2: its output is capped as well."""
    path = tmp_path / "snapshots.qcow2"
    qemu_img("create", "-f", "qcow2", path, "16M")
    for i in range(3):
        qemu_img("snapshot", "-c", f"snapshot-{i}", path)
    assert qemu.info(commands, path, "qcow2")["format"] == "qcow2"
    monkeypatch.setattr(qemu, "MAX_INFO_OUTPUT", 400)
    with pytest.raises(UnsafeImage, match="snapshots.qcow2: qemu-img info printed over 400 characters: refused"):
        qemu.info(commands, path, "qcow2")


# ---- 10. virtual size: max_virtual_size


def test_a_tiny_qcow2_claiming_16_tib_is_refused_by_default(inspect, tmp_path):
    path = created(tmp_path, "qcow2", "16T")
    assert path.stat().st_size < 512 * KiB
    assert refusal(inspect, path, "qcow2") == (f"virtual size {16 * TiB} bytes exceeds the limit of 2.0 TiB (max_"
                                               f"virtual_size in config.yml): image {path.name} (16.0 TiB) refused")


def test_max_virtual_size_comes_from_config_yml(inspect, tmp_path):
    path = created(tmp_path, "qcow2", "2G")
    assert inspect(path, "qcow2", max_virtual_size="3G").virtual_size == 2 * GiB
    expected = (f"virtual size {2 * GiB} bytes exceeds the limit of 1.0 GiB (max_virtual_size in config.yml): "
                f"image {path.name} (2.0 GiB) refused")
    assert refusal(inspect, path, "qcow2", max_virtual_size="1G") == expected
    assert refusal(inspect, path, "qcow2", max_virtual_size=GiB) == expected  # bytes work too


def test_default_and_bad_max_virtual_size(tmp_path):
    assert config_factory(tmp_path).max_virtual_size == 2 * TiB
    assert config_factory(tmp_path, max_virtual_size="500G").max_virtual_size == 500 * GiB
    for bad in ("lots", 0, -1, True, [1]):
        with pytest.raises(ConfigError, match="config.yml: key 'max_virtual_size' must be"):
            config_factory(tmp_path, max_virtual_size=bad)


def test_the_streamed_staged_copy_keeps_the_payloads_holes(tmp_path):
    """The stream's line on the head node (run here by a real sh and coreutils): a 64 MiB raw disk
    with 2 MiB of data takes at most a few MiB in the staging dir, not 64."""
    payload = tmp_path / "disk.raw"
    with open(payload, "wb") as f:
        f.truncate(64 * MiB)
        for offset in (0, 40 * MiB + 12345):
            f.seek(offset)
            f.write(os.urandom(MiB))
    staged, uploaded, seen = tmp_path / "staging" / "x.raw", tmp_path / "uploaded", tmp_path / "seen"
    # the upload reads to the end (the receiving side has finished), then looks at the staged copy
    upload = "sh -c 'cat > \"$UPLOADED\"; stat -c \"%b %s\" -- \"$STAGED\" > \"$SEEN\"' upload"
    commands = StreamCommands(create=f"echo {uuid.uuid4()}", id_of="cat", upload=upload, delete="true")
    line = stream.remote_line(commands, str(staged), payload.stat().st_size, None)
    with open(payload, "rb") as data:
        proc = subprocess.run(["sh", "-c", line], stdin=data, capture_output=True, timeout=120,
                              env={**os.environ, "UPLOADED": str(uploaded), "STAGED": str(staged), "SEEN": str(seen)})
    assert proc.returncode == 0, proc.stderr
    blocks, size = map(int, seen.read_text().split())
    assert size == 64 * MiB
    assert blocks * 512 <= 4 * MiB, f"the staged copy took {blocks * 512} bytes"
    with open(uploaded, "rb") as got, open(payload, "rb") as sent:  # every byte (zeros too) reached Glance
        assert hashlib.file_digest(got, "sha256").digest() == hashlib.file_digest(sent, "sha256").digest()
    assert not staged.exists()


# ---- 11. the content's real format must be the Glance disk_format


@pytest.mark.parametrize("qemu_fmt,opts,fmt", [("qcow2", [], "qcow2"),
                                               ("vmdk", ["-o", "subformat=monolithicSparse"], "vmdk"),
                                               ("vpc", ["-o", "subformat=dynamic"], "vhd"), ("vhdx", [], "vhdx"),
                                               ("qed", [], "qed"), ("vdi", [], "vdi")])
def test_another_format_declared_raw_is_refused(inspect, tmp_path, qemu_fmt, opts, fmt):
    path = created(tmp_path, qemu_fmt, "16M", *opts)
    assert refusal(inspect, path, "raw") == (f"image {path.name}: its content is {fmt} but its Glance disk_format "
                                             f"is raw: refused (a destination that probes formats would read it "
                                             f"as {fmt})")


def test_qcow2_declared_vmdk_is_refused(inspect, tmp_path):
    path = created(tmp_path, "qcow2", "16M")
    assert "its content is qcow2 but its Glance disk_format is vmdk" in refusal(inspect, path, "vmdk")


@pytest.mark.parametrize("disk_format", ["raw", "iso"])
def test_raw_content_declared_raw_or_iso_passes(inspect, tmp_path, disk_format):
    path = store_file(tmp_path)
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x55" * 4096)
    assert inspect(path, disk_format).virtual_size == 8 * MiB


def test_a_fixed_vhd_probed_as_raw_still_passes_as_vhd(inspect, tmp_path):
    path = created(tmp_path, "vpc", "8M", "-o", "subformat=fixed")  # only a footer: qemu probes raw
    assert inspect(path, "vhd").virtual_size >= 8 * MiB


# ---- 12. VMDK: single-file subformats only


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_single_file_vmdks_pass(inspect, tmp_path, subformat):
    path = created(tmp_path, "vmdk", "16M", "-o", f"subformat={subformat}")
    assert inspect(path, "vmdk").virtual_size == 16 * MiB


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
def test_multi_file_vmdks_are_refused(inspect, tmp_path, subformat):
    path = created(tmp_path, "vmdk", "16M", "-o", f"subformat={subformat}")
    assert refusal(inspect, path, "vmdk") == (f"image {path.name}: VMDK without a sparse extent header (a "
                                              f"descriptor, whose data is in other files): refused, only "
                                              f"monolithicSparse and streamOptimized VMDKs (one file each) are "
                                              f"migrated")


def test_an_extent_with_the_image_files_name_in_another_dir_is_refused(inspect, tmp_path):
    """The old check compared basenames only: <store>/<id> naming ../elsewhere/<id> passed."""
    path = store_file(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / path.name).write_bytes(b"secret of another tenant\n" * 1000)
    with open(elsewhere / path.name, "r+b") as f:
        f.truncate(8 * MiB)
    path.write_text('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                    'createType="monolithicFlat"\n\n'
                    f'RW 16384 FLAT "../elsewhere/{path.name}" 0\n\nddb.adapterType = "ide"\n')
    assert refusal(inspect, path, "vmdk").startswith(f"image {path.name}: VMDK without a sparse extent header")


def test_a_sparse_header_that_defers_to_a_descriptor_is_refused(inspect, tmp_path):
    """A VMDK4 header with no capacity makes qemu read its embedded descriptor as a descriptor file,
    whose extents can name any file: it looks like a monolithicSparse from the outside."""
    path = created(tmp_path, "vmdk", "8M", "-o", "subformat=monolithicSparse")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with open(elsewhere / path.name, "wb") as f:
        f.truncate(8 * MiB)
    descriptor = (b'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                  b'createType="monolithicFlat"\n' + f'RW 16384 FLAT "../elsewhere/{path.name}" 0\n'.encode())
    with open(path, "r+b") as f:
        assert f.read(4) == b"KDMV"
        f.seek(12)
        f.write(struct.pack("<Q", 0))  # capacity 0
        f.seek(28)
        desc_offset, = struct.unpack("<Q", f.read(8))
        f.seek(desc_offset * 512)
        f.write(descriptor.ljust(1024, b"\0"))
    assert "../elsewhere" in subprocess.run(["qemu-img", "info", "--output=json", "-f", "vmdk", str(path)],
                                            capture_output=True, text=True, check=True).stdout  # qemu follows it
    assert refusal(inspect, path, "vmdk").startswith(f"image {path.name}: VMDK without a sparse extent header")


def test_a_vmdk_descriptor_declared_raw_is_refused(inspect, tmp_path):
    path = created(tmp_path, "vmdk", "8M", "-o", "subformat=monolithicFlat")
    assert "its content is vmdk but its Glance disk_format is raw" in refusal(inspect, path, "raw")

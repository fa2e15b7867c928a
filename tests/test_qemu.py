"""qemu-img wrappers against the real qemu-img, on small images made here."""

import logging
import subprocess

import pytest

from migratio.errors import PermanentError, UnsafeImage
from migratio.local import qemu
from migratio.local.commands import Commands

MiB = 1024 * 1024


@pytest.fixture
def commands():
    return Commands(logging.getLogger("test"))


def qemu_img(*args):
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def make_raw(path, size_mib=16, data_at=(0, 5)):
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
        for mib in data_at:
            f.seek(mib * MiB)
            f.write(bytes(range(256)) * 4096)  # 1 MiB of non-zero data
    return path


@pytest.fixture
def qcow2(tmp_path):
    raw = make_raw(tmp_path / "src.raw")
    path = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, path)
    return path


def test_info_of_a_plain_qcow2_is_safe(commands, qcow2):
    data = qemu.info(commands, qcow2, "qcow2")
    assert data["format"] == "qcow2"
    assert qemu.check_safe(data, qcow2) == 16 * MiB


def test_backing_file_is_refused(commands, tmp_path, qcow2):
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", qcow2, "-F", "qcow2", overlay)
    with pytest.raises(UnsafeImage, match="backing file"):
        qemu.check_safe(qemu.info(commands, overlay, "qcow2"), overlay)


def test_backing_file_pointing_at_a_host_file_is_refused(commands, tmp_path):
    overlay = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", overlay, "16M")
    with pytest.raises(UnsafeImage, match="/etc/passwd"):
        qemu.check_safe(qemu.info(commands, overlay, "qcow2"), overlay)


def test_external_data_file_is_refused(commands, tmp_path):
    path = tmp_path / "df.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", path, "16M")
    with pytest.raises(UnsafeImage, match="external data file"):
        qemu.check_safe(qemu.info(commands, path, "qcow2"), path)


def test_vmdk_with_a_foreign_extent_is_refused(commands, tmp_path):
    path = tmp_path / "flat.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", path, "8M")
    with pytest.raises(UnsafeImage, match="extent"):
        qemu.check_safe(qemu.info(commands, path, "vmdk"), path)


def test_raw_bytes_declared_qcow2_are_not_probed(commands, tmp_path):
    raw = make_raw(tmp_path / "plain.raw", 4, (1,))
    with pytest.raises(UnsafeImage, match="not a readable qcow2 image"):
        qemu.info(commands, raw, "qcow2")


def test_qcow2_declared_raw_is_refused(commands, qcow2):
    with pytest.raises(UnsafeImage, match="its content is qcow2 but its Glance disk_format is raw"):
        qemu.info(commands, qcow2, "raw")


def test_unknown_disk_format_is_refused(commands, qcow2):
    with pytest.raises(UnsafeImage, match="disk format 'floppy' is not supported"):
        qemu.info(commands, qcow2, "floppy")


def test_virtual_size_beyond_the_limit_is_refused(commands, tmp_path):
    path = tmp_path / "huge.qcow2"
    qemu_img("create", "-f", "qcow2", path, "64T")
    data = qemu.info(commands, path, "qcow2")
    with pytest.raises(UnsafeImage, match="exceeds the limit"):
        qemu.check_safe(data, path)
    assert qemu.check_safe(data, path, max_virtual_size=128 * 1024 ** 4) == 64 * 1024 ** 4


def test_convert_to_raw_is_sparse_reports_progress_and_keeps_the_data(commands, tmp_path, qcow2):
    out = tmp_path / "out.raw"
    fractions = []
    qemu.convert(commands, qcow2, "qcow2", out, "raw", progress=fractions.append)
    assert out.stat().st_size == 16 * MiB
    assert out.stat().st_blocks * 512 < 8 * MiB  # holes stay holes
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert out.read_bytes() == (tmp_path / "src.raw").read_bytes()


def test_failed_convert_removes_the_partial_output(commands, tmp_path):
    bogus = make_raw(tmp_path / "bogus", 1, (0,))
    out = tmp_path / "out.raw"
    with pytest.raises(PermanentError, match="qemu-img convert of bogus to raw failed"):
        qemu.convert(commands, bogus, "qcow2", out, "raw")
    assert not out.exists()


def test_required_bytes_counts_data_not_holes(commands, qcow2):
    assert qemu.allocated_bytes(commands, qcow2, "qcow2") == 2 * MiB
    assert qemu.required_bytes(commands, qcow2, "qcow2", "raw") == 2 * MiB
    assert 2 * MiB <= qemu.required_bytes(commands, qcow2, "qcow2", "qcow2") < 4 * MiB  # measure
    assert 2 * MiB <= qemu.required_bytes(commands, qcow2, "qcow2", "vmdk") < 4 * MiB  # no measure


def test_convert_argv_uses_parallel_coroutines_and_glance_format_names():
    argv = qemu.convert_argv("in.vhd", "vhd", "out.qcow2", "qcow2")
    assert argv[:2] == ["qemu-img", "convert"]
    assert argv[argv.index("-f") + 1] == "vpc"
    assert argv[argv.index("-O") + 1] == "qcow2"
    assert argv[argv.index("-m") + 1] == "8" and "-W" in argv and "-p" in argv
    assert argv[-2:] == ["in.vhd", "out.qcow2"]

"""The stream compressed with zstd: a realistic image arrives bytes-identical with fewer bytes on
the wire, random data goes as it is, a head node without zstd falls back (auto) or fails (true),
a compressor dying mid-stream leaves no image and names itself."""

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from bench.images import make_raw
from migratio.openstack import compression, glance_cli, stream
from tests.doubles import FAKE_GLANCE, IMAGE_ID
from tests.fixtures.lab import staged

WIRE_RE = re.compile(r"^Image transferred \((\d+) MiB in \d+ s, (\d+) MiB on the wire with zstd, streamed")


def real_files_qcow2(directory: Path) -> Path:
    """64 MiB virtual, about 16 MiB of this machine's /usr in an ext4 filesystem (the benchmark's kind)."""
    raw, qcow2 = directory / "fs.raw", directory / "fs.qcow2"
    make_raw("realistic", "64M", 16, raw, directory / "files")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True,
                   capture_output=True)
    raw.unlink()
    return qcow2


def test_compressed_feed_is_decoded_by_the_line_into_the_same_bytes(tmp_path):
    """The worker's compressor and the head node's line (a real sh, a glance stand-in) agree."""
    fake, glance = tmp_path / "fake", tmp_path / "glance"
    fake.mkdir()
    glance.write_text(FAKE_GLANCE)
    glance.chmod(0o755)
    payload = real_files_qcow2(tmp_path)
    size = payload.stat().st_size
    line = stream.remote_line(glance_cli.cli_commands([str(glance)], ["image-create"], size),
                              str(tmp_path / "staging" / "x.qcow2"), size, None, compression.DECOMPRESS)
    proc = subprocess.Popen(["sh", "-c", line], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "FAKE_DIR": str(fake)})
    tally, seen = stream.Tally(), []
    stream.feeder(payload, None, seen.append, compress=True, tally=tally)(proc.stdin)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert stream.created_id(out.decode()) == IMAGE_ID
    assert (fake / "uploaded").read_bytes() == payload.read_bytes()
    assert seen[-1] == tally.payload == size
    assert tally.wire < size / 1.5  # real files: about 2x


def test_random_data_is_not_worth_compressing(tmp_path):
    noise, text = tmp_path / "noise", real_files_qcow2(tmp_path)
    noise.write_bytes(os.urandom(12 * 1024 * 1024))
    assert compression.sample_ratio(noise) < compression.MIN_RATIO < compression.sample_ratio(text)


# --------------------------------------------------------------------------- on the lab


@pytest.fixture
def fs_image(lab, tmp_path):
    """An ext4 filesystem of real files as a qcow2 on site-a (deleted by clean_lab_images)."""
    path = real_files_qcow2(tmp_path)
    api = lab.site_a.api()
    image = api.create_image(f"lab-fs-{uuid.uuid4().hex[:8]}", "qcow2", "bare")
    api.upload(image["id"], path)
    api.wait_status(image["id"], "active")
    return image["id"], path


def _programs_but_zstd(tmp_path: Path) -> Path:
    """A directory of links to every program of /usr/bin and /bin but zstd's."""
    farm = tmp_path / "no-zstd"
    farm.mkdir()
    for program in [*Path("/bin").iterdir(), *Path("/usr/bin").iterdir()]:
        if "zstd" not in program.name and not (farm / program.name).exists():
            (farm / program.name).symlink_to(program)
    return farm


@pytest.fixture
def no_zstd_env_file(lab, tmp_path):
    """A remote_env_file: the lab's own (credentials, PATH), then its PATH without zstd."""
    env = tmp_path / "no-zstd.env"
    env.write_text(f". {lab.head_node.env_file}\n"
                   "PATH=$(printf %s \"$PATH\" | tr : '\\n' | grep -vx -e /bin -e /usr/bin | paste -sd :)"
                   f":{_programs_but_zstd(tmp_path)}\nexport PATH\n")
    return str(env)


def _transferred(out) -> str:
    return next(ln for ln in out.lines if ln.startswith("Image transferred ("))


@pytest.mark.lab
def test_a_real_filesystem_is_streamed_compressed_and_verifies(lab, fs_image, migrate_on_lab):
    image_id, path = fs_image
    out = migrate_on_lab(image_id, job_id=str(uuid.uuid4()), bandwidth_limit=40000)
    assert out.status == "finished", out.meta.get("error")
    dest = lab.site_b.api().get_image(out.result["dest_image_id"])
    assert dest["status"] == "active" and dest["size"] == path.stat().st_size
    lab.site_b.api().download(dest["id"], dest_copy := path.with_name("back.qcow2"))
    assert dest_copy.read_bytes() == path.read_bytes()
    payload_mib, wire_mib = map(int, WIRE_RE.match(_transferred(out)).groups())
    assert wire_mib < payload_mib / 1.5
    assert not staged(lab, image_id)


@pytest.mark.lab
def test_random_data_is_streamed_uncompressed_under_auto(lab, glance_image, migrate_on_lab):
    img = glance_image(virtual_size="64M", data_mib=6)
    out = migrate_on_lab(img.id, job_id=str(uuid.uuid4()), bandwidth_limit=100000)
    assert out.status == "finished", out.meta.get("error")
    assert "streamed into Glance" in _transferred(out) and "zstd" not in _transferred(out)


@pytest.mark.lab
def test_an_uncapped_link_is_streamed_uncompressed_under_auto(lab, fs_image, migrate_on_lab):
    """No bandwidth_limit: the link may be as fast as the CPU, auto leaves the stream alone."""
    image_id, _ = fs_image
    out = migrate_on_lab(image_id, job_id=str(uuid.uuid4()))
    assert out.status == "finished", out.meta.get("error")
    assert "streamed into Glance" in _transferred(out) and "zstd" not in _transferred(out)


@pytest.mark.lab
def test_a_head_node_without_zstd_falls_back_under_auto(lab, fs_image, migrate_on_lab, no_zstd_env_file):
    image_id, path = fs_image
    out = migrate_on_lab(image_id, job_id=str(uuid.uuid4()), remote_env_file=no_zstd_env_file,
                         bandwidth_limit=100000)
    assert out.status == "finished", out.meta.get("error")
    assert "streamed into Glance" in _transferred(out) and "zstd" not in _transferred(out)
    dest = lab.site_b.api().get_image(out.result["dest_image_id"])
    assert dest["status"] == "active" and dest["size"] == path.stat().st_size


@pytest.mark.lab
def test_a_head_node_without_zstd_fails_under_true(lab, fs_image, migrate_on_lab, no_zstd_env_file):
    image_id, _ = fs_image
    out = migrate_on_lab(image_id, job_id=str(uuid.uuid4()), remote_env_file=no_zstd_env_file, compress=True)
    assert out.status == "failed"
    error = out.meta.get("error")
    assert "key 'compress' is true but zstd is not installed on the head node" in error and "site-b" in error
    assert "\n" not in error
    assert lab.site_b.api().list_images(source_uuid=image_id) == []


@pytest.mark.lab
def test_a_compressor_dying_mid_stream_leaves_no_image(lab, fs_image, migrate_on_lab, tmp_path, monkeypatch):
    """A zstd that dies after 4 MB of input: the job fails naming it, site-b keeps no image."""
    shim = tmp_path / "shim"
    shim.mkdir()
    real = compression.local_program()
    (shim / "zstd").write_text(f'#!/bin/sh\nhead -c 4000000 | {real} "$@"\n'  # (compress: true takes no sample)
                               'echo "zstd: shim died mid-stream" >&2; kill -9 $$\n')
    (shim / "zstd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    image_id, _ = fs_image
    out = migrate_on_lab(image_id, job_id=str(uuid.uuid4()), compress=True)
    assert out.status == "failed"
    error = out.meta.get("error")
    assert "zstd compressing" in error and "died: zstd: shim died mid-stream" in error, error
    assert lab.site_b.api().list_images(source_uuid=image_id) == []

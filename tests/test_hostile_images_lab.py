"""Hostile images on the lab, migrated site-a -> site-b by a real worker (issue 14, 10 and 11): a
qcow2 uploaded as disk_format raw and a tiny qcow2 claiming 16 TiB (both taken by the lab's Glance
33), and the head node's staging dir: a sparse disk larger than it still fits, data that cannot
fit is refused before anything is sent."""

import subprocess
from pathlib import Path

import pytest
import redis
from rq.job import Job

from migratio.conf.config import load_config
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.worker import build_app, run_worker
from support.lab.config import write_migratio_config

pytestmark = pytest.mark.lab
KiB, MiB, TiB = 1024, 1024 ** 2, 1024 ** 4


@pytest.fixture
def migrate(lab, redis_server, tmp_path, clean_lab_images):
    """migrate(image_id, **site_b_overrides) -> (job, status lines), one job through a real burst worker."""
    runs = iter(range(100))

    class Lines:
        def __init__(self, path: Path):
            self.path = path

        def emit(self, job, text):
            with open(self.path, "a") as f:
                f.write(text + "\n")

    def run(image_id: str, **site_b):
        root = tmp_path / f"run{next(runs)}"
        config = load_config(write_migratio_config(lab, root, site_b, redis_url=redis_server.url, retries=0))
        lines = Lines(root / "status.log")
        app = build_app(config, redis.Redis.from_url(redis_server.url), sinks=(lines,))
        job = enqueue_migration(migration_queue(config, app.redis), config, image_id, "site-b")
        run_worker(app, burst=True)
        return Job.fetch(job.id, connection=app.redis), lines.path.read_text().splitlines()

    return run


@pytest.fixture
def small_staging(tmp_path):
    """A 96 MiB tmpfs as the head node's staging dir (the head node is this machine)."""
    where = tmp_path / "small-staging"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0700", "migratio-test", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def staged(directory: Path, image_id: str) -> list[str]:
    return [p.name for p in directory.iterdir() if image_id in p.name]


def assert_refused_before_sending(lab, job, lines, image_id: str, error: str, kind: str, staging: Path) -> None:
    assert job.get_status() == "failed"
    assert job.meta["error"] == error
    assert kind in job.latest_result().exc_string
    assert "transfer" not in job.meta["steps_done"] and not job.meta.get("bytes_done")  # nothing sent
    assert lines[-1] == f"Migration failed: {error}"
    assert lab.site_b.api().list_images(source_uuid=image_id) == []
    assert staged(staging, image_id) == []


@pytest.mark.parametrize("register", [{"via": "ssh"}, {"via": "api", "cloud": "site-b"}], ids=["ssh", "api"])
def test_a_qcow2_uploaded_as_raw_is_refused(lab, glance_image, migrate, register):
    img = glance_image(disk_format="raw")  # the lab's Glance takes a qcow2 without backing file as raw
    assert img.image["disk_format"] == "raw"
    assert "file format: qcow2" in subprocess.run(["qemu-img", "info", str(img.path)], capture_output=True,
                                                  text=True, check=True).stdout
    job, lines = migrate(img.id, register=register)
    assert_refused_before_sending(lab, job, lines, img.id, (
        f"image {img.id}: its content is qcow2 but its Glance disk_format is raw: refused "
        f"(a destination that probes formats would read it as qcow2)"), "UnsafeImage", lab.head_node.staging_dir)
    assert job.meta["steps_done"] == ["locate", "dedupe"]  # it failed in inspect


def test_a_tiny_qcow2_claiming_16_tib_is_refused(lab, migrate, tmp_path):
    path = tmp_path / "claims-16T.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16T"], check=True)
    assert path.stat().st_size < 512 * KiB
    image = lab.site_a.api().upload_image(path, "claims 16 TiB")  # (deleted by clean_lab_images)
    job, lines = migrate(image["id"])
    assert_refused_before_sending(lab, job, lines, image["id"], (
        f"virtual size {16 * TiB} bytes exceeds the limit of 2.0 TiB (max_virtual_size in config.yml): "
        f"image {image['id']} (16.0 TiB) refused"), "UnsafeImage", lab.head_node.staging_dir)
    assert job.meta["steps_done"] == ["locate", "dedupe"]


@pytest.mark.parametrize("stream_it", [True, False], ids=["stream", "rsync"])
def test_a_sparse_raw_larger_than_the_staging_dir_fits(lab, glance_image, migrate, small_staging, stream_it):
    """128 MiB virtual, 4 MiB of data, converted to raw: what is staged is the data, not the zeros."""
    img = glance_image(virtual_size="128M", data_mib=4)
    job, lines = migrate(img.id, staging_dir=str(small_staging), disk_format="raw", stream=stream_it)
    assert job.get_status() == "finished", job.meta.get("error")
    dest = lab.site_b.api().get_image(job.return_value()["dest_image_id"])
    assert (dest["status"], dest["disk_format"], dest["size"]) == ("active", "raw", 128 * MiB)
    assert staged(small_staging, img.id) == []


def test_data_that_cannot_fit_on_the_head_node_is_refused_before_sending(lab, glance_image, migrate, small_staging):
    img = glance_image(virtual_size="128M", data_mib=100)
    job, lines = migrate(img.id, staging_dir=str(small_staging))
    error = job.meta.get("error") or ""
    assert error.startswith(f"not enough space in {small_staging} on site-b for staging image {img.id}: need "), error
    assert error.endswith(" free")
    assert_refused_before_sending(lab, job, lines, img.id, error, "NotEnoughSpace", small_staging)

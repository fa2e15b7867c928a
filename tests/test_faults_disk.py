"""Disk space and temp dirs: a real tiny filesystem, stale job dirs of a dead worker."""

import subprocess
import time

import pytest
from rq.registry import StartedJobRegistry

from migratio.errors import NotEnoughSpace
from migratio.local.workdirs import remove_stale
from migratio.steps.common import ensure_space
from migratio.units import MiB
from tests.builders import config_factory, write_site
from tests.faults_helpers import Worker, wait_for


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_space_check_on_a_real_small_filesystem(tiny_tmpfs):
    with pytest.raises(NotEnoughSpace, match=rf"not enough space in {tiny_tmpfs} for downloading image x: "
                                             r"need 65 MiB, 24 MiB free"):
        ensure_space(tiny_tmpfs, 1 * MiB, "downloading image x")


@pytest.mark.lab
def test_download_that_would_fill_the_disk_fails_clearly(env, glance_image, tiny_tmpfs, tmp_path):
    img = glance_image(data_mib=4)
    no_store = tmp_path / "no-store"
    no_store.mkdir()
    env.configure(work_dir=str(tiny_tmpfs / "work"), images_dir=str(no_store))
    env.worker()
    job = env.enqueue(img.id)
    assert env.wait_ended(job.id) == "failed"
    reason = env.meta(job.id)["error"]
    assert reason.startswith(f"not enough space in {tiny_tmpfs / 'work' / job.id} for downloading image {img.id}: "
                             "need ")
    assert env.feedback(img.id)[-1] == f"Migration failed: {reason}"
    assert env.job(job.id).retries_left == 0 and "NotEnoughSpace" in env.job(job.id).latest_result().exc_string
    assert list((tiny_tmpfs / "work").iterdir()) == []  # the job dir went too
    assert env.copies(img.id) == []


def test_worker_start_removes_temp_dirs_of_jobs_that_no_longer_run(tmp_path, fault_redis, rclient):
    config = config_factory(tmp_path, redis_url=fault_redis.url)
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
    work = config.work_dir
    for name in ("dead-job-1", "dead-job-2", "running-job", "not a job"):
        (work / name).mkdir(parents=True)
        (work / name / "image.raw").write_bytes(b"x" * 1000)
    (work / "note.txt").write_text("kept")
    registry = StartedJobRegistry(config.queue_name, connection=rclient)
    rclient.zadd(registry.key, {"running-job:exec-1": time.time() + 600})  # another worker runs it
    rclient.sadd("rq:queues", f"rq:queue:{config.queue_name}")
    worker = Worker(tmp_path / "config.yml", tmp_path / "worker.err")
    try:
        wait_for(lambda: not (work / "dead-job-2").exists(), "the stale dirs to go", proc=worker, timeout=60)
        assert sorted(p.name for p in work.iterdir()) == ["not a job", "note.txt", "running-job"]
        assert "removed stale temp dir" in worker.stderr
    finally:
        worker.stop()


def test_remove_stale_asks_who_runs_after_listing(tmp_path):
    (tmp_path / "job-a").mkdir()
    (tmp_path / "job-b").mkdir()
    asked = []

    def running():
        asked.append([p.name for p in tmp_path.iterdir()])
        (tmp_path / "job-c").mkdir()  # started meanwhile: not listed, so never removed
        return ["job-b"]

    removed = remove_stale(tmp_path, running)
    assert [p.name for p in removed] == ["job-a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-b", "job-c"]

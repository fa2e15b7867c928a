"""Killed workers: SIGKILL of the worker and all its descendants (systemd's cgroup kill) in the
middle of the transfer or of the remote registration, the work-horse alone killed (the OOM
killer), SIGTERM once (warm) and twice (cold). The job resumes, one image ends at the destination."""

import os
import sys

import pytest

from migratio.units import MiB
from tests.faults_helpers import alive, kill_matching, wait_for
from tests.fixtures.faults import RESUME_SLACK, only_active_copy, progressed, transfer_under_way

# -- SIGKILL mid-transfer


@pytest.mark.lab
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "rsync"])
def test_worker_killed_mid_transfer_resumes_from_the_partial_file(env, glance_image, stream):
    """systemd's cgroup kill (worker, work-horse, ssh/rsync at once) in the middle of the transfer
    (streamed into Glance, or rsync to the staging dir): the restarted worker hands the job back
    at once, takes over the dead job's lock, the half-made image is deleted, and rsync resumes
    from the partial file on the head node; one image at the destination."""
    img = glance_image(data_mib=8)
    first, job = transfer_under_way(env, img, 0.5, stream=stream)  # ~8 s of transfer
    half_made = [c["id"] for c in env.copies(img.id)] if stream else []
    assert len(half_made) == int(stream)  # streamed: the record exists and is being uploaded

    first.kill_all()
    wait_for(env.proxy.idle, "the cut connections to close")  # bytes in flight are relayed and counted
    staged = env.staged(img.id)
    partial = wait_for(lambda: staged.exists() and staged.stat().st_size, "the partial file on the head node")
    assert RESUME_SLACK + MiB < partial < img.size  # (so that resuming is told apart from restarting)
    assert env.status(job.id) == "started"  # abandoned: nobody runs it any more
    assert env.redis.ttl(env.lock_key(img.id)) > 3000  # the dead horse's lock (lock_ttl 3600) is still there
    if stream:  # the upload was cut short: Glance never makes it active
        wait_for(lambda: env.copies(img.id)[0]["status"] != "saving", "the cut upload to end")
        assert [c["status"] for c in env.copies(img.id)] == ["queued"]

    before = env.uploaded()
    second = env.worker()
    assert env.wait_ended(job.id, second) == "finished", env.job_log(job.id)
    resent = env.uploaded() - before

    assert resent < img.size - partial + RESUME_SLACK, (resent, img.size, partial)  # resumed, not restarted
    copy = only_active_copy(env, img)
    assert copy["id"] not in half_made
    assert env.job(job.id).return_value()["dest_image_id"] == copy["id"]
    assert not staged.exists() and not env.redis.exists(env.lock_key(img.id))
    assert not (env.config.work_dir / job.id).exists()
    lines = env.feedback(img.id)
    assert "Migration interrupted (its worker stopped); it will resume" in lines
    assert lines[-1] == f"Migration finished: image {copy['id']} on site-b verified"
    assert not [ln for ln in lines if "failed" in ln.lower()]
    assert "was left running by a worker that died: handed back to RQ" in second.stderr
    assert "took over the lock" in env.job_log(job.id)


@pytest.mark.lab
def test_work_horse_killed_mid_transfer_is_retried_by_its_worker(env, glance_image):
    """Only the work-horse dies (OOM killer): the worker itself retries the job, which resumes."""
    img = glance_image(data_mib=8)
    env.configure(site_b={"bandwidth_limit": 1024})
    worker = env.worker()
    job = env.enqueue(img.id)
    wait_for(lambda: progressed(env, job.id, "transfer", 0.4, img.size) and worker.running("ssh"),
             "40% transferred", proc=worker)
    horse = worker.parent_of(worker.running("ssh")[0])
    os.kill(horse, 9)
    wait_for(env.proxy.idle, "the cut connections to close")
    before = env.uploaded()

    assert env.wait_ended(job.id, worker) == "finished", env.job_log(job.id)
    resent = env.uploaded() - before
    assert resent < img.size * 0.8, (resent, img.size)
    copy = only_active_copy(env, img)
    assert env.feedback(img.id)[-1] == f"Migration finished: image {copy['id']} on site-b verified"
    assert env.job(job.id).retries_left == 2  # the crash used one retry
    assert not env.staged(img.id).exists() and not env.redis.exists(env.lock_key(img.id))


# -- SIGKILL mid-register


REGISTER_WRAPPER = """\
#!{python}
# glance on the head node, except that the first image-create stops half-way through its upload
# (and says so) until it is killed; later ones upload at full speed.
import os, subprocess, sys, time
from pathlib import Path
state = Path({state!r})
args = sys.argv[1:]
if args[:1] != ["image-create"]:
    os.execvp("glance", ["glance", *args])
path = next(a.split("=", 1)[1] for a in args if a.startswith("--file="))
first = not (state / "first").exists()
(state / "first").touch()
proc = subprocess.Popen(["glance", *[a for a in args if not a.startswith("--file=")]], stdin=subprocess.PIPE)
size = os.path.getsize(path)
with open(path, "rb") as f:
    proc.stdin.write(f.read(size // 2))
    proc.stdin.flush()
    if first:
        (state / "half").write_text(str(os.getpid()))
        while True:
            time.sleep(0.1)
    proc.stdin.write(f.read())
proc.stdin.close()
sys.exit(proc.wait())
"""


@pytest.mark.lab
def test_worker_killed_mid_register_leaves_one_active_image(env, glance_image, tmp_path):
    """Killed while the head node's glance uploads the staged file: the remote upload is hung up
    with the connection (it runs on a terminal), the retried job deletes the half-made image it
    finds, re-uses the staged file (no bytes re-sent) and registers exactly one image."""
    img = glance_image(data_mib=4)
    state = tmp_path / "wrapper-state"
    state.mkdir()
    wrapper = tmp_path / "glance-wrapper"
    wrapper.write_text(REGISTER_WRAPPER.format(python=sys.executable, state=str(state)))
    wrapper.chmod(0o755)
    env.configure(site_b={"glance_command": str(wrapper), "stream": False})  # register from the staged file
    try:
        _kill_mid_register(env, img, state)
    finally:
        kill_matching(str(wrapper))  # only if it outlived the connection (the test then failed)


def _kill_mid_register(env, img, state):
    first = env.worker()
    job = env.enqueue(img.id)
    wait_for(lambda: (state / "half").exists() and env.copies(img.id), "the upload to stop half-way", proc=first)
    remote_pid = int((state / "half").read_text())
    half_made = env.copies(img.id)
    assert [c["status"] for c in half_made] == ["saving"]

    first.kill_all()
    wait_for(lambda: not alive(remote_pid), "the remote upload to be hung up with the connection", timeout=60)
    wait_for(env.proxy.idle, "the cut connections to close")
    assert env.staged(img.id).stat().st_size == img.size  # transferred before: kept for the retry

    before = env.uploaded()
    second = env.worker()
    assert env.wait_ended(job.id, second) == "finished", env.job_log(job.id)
    assert env.uploaded() - before < img.size // 4  # the staged file was re-used
    copy = only_active_copy(env, img)
    assert copy["id"] != half_made[0]["id"]
    assert env.lab.site_b.api().get_image(half_made[0]["id"]) is None  # the half-made one was deleted
    assert "deleting leftover image " + half_made[0]["id"] in env.job_log(job.id)
    assert env.feedback(img.id)[-1] == f"Migration finished: image {copy['id']} on site-b verified"


# -- SIGTERM


@pytest.mark.lab
def test_sigterm_lets_the_running_migration_finish(env, glance_image):
    img = glance_image(data_mib=6)
    worker, job = transfer_under_way(env, img, 0.2)
    worker.terminate()
    assert worker.wait(timeout=240) == 0, worker.stderr  # warm shutdown: after the job
    assert "warm shut down requested" in worker.stderr
    assert env.status(job.id) == "finished"
    copy = only_active_copy(env, img)
    lines = env.feedback(img.id)
    assert lines[-1] == f"Migration finished: image {copy['id']} on site-b verified"
    assert not [ln for ln in lines if "fail" in ln.lower() or "interrupted" in ln.lower()]
    assert env.meta(job.id)["state"] == "finished"


@pytest.mark.lab
def test_second_sigterm_requeues_the_job_and_the_next_worker_resumes_it(env, glance_image):
    """SIGTERM twice (a cold shutdown): the work-horse is killed, the job is handed back when a
    worker starts again and resumes; no status line says it failed."""
    img = glance_image(data_mib=8)
    worker, job = transfer_under_way(env, img, 0.4)
    worker.terminate()
    wait_for(lambda: "warm shut down requested" in worker.stderr, "the warm shutdown", proc=worker)

    def cold():  # RQ ignores a second signal within 1 s of the first: repeat until it took
        if worker.proc.poll() is None:
            worker.terminate()
        return "cold shut down" in worker.stderr
    wait_for(cold, "the cold shutdown", interval=0.5)
    worker.wait(timeout=60)
    assert env.status(job.id) == "started"
    wait_for(env.proxy.idle, "the cut connections to close")
    staged = env.staged(img.id)
    partial = wait_for(lambda: staged.exists() and staged.stat().st_size, "the partial file")
    assert RESUME_SLACK + MiB < partial < img.size

    before = env.uploaded()
    again = env.worker()
    assert env.wait_ended(job.id, again) == "finished", env.job_log(job.id)
    assert env.uploaded() - before < img.size - partial + RESUME_SLACK
    only_active_copy(env, img)
    lines = env.feedback(img.id)
    assert "Migration interrupted (its worker stopped); it will resume" in lines
    assert not [ln for ln in lines if "failed" in ln.lower()]

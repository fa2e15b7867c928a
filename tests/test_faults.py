"""Crash safety and idempotency, proven by injecting real faults.

A real `migratio worker` process migrates real images from lab site-a to site-b (Glance,
head-node sshd, rsync, qemu-img) through a private Redis that persists every write and needs a
password. Faults are the real thing: SIGKILL of the worker and all its descendants (systemd's
cgroup kill), SIGTERM, a Redis restart, a stopped sshd, a cut TCP link (a relay in front of
sshd that also counts the bytes that cross it), a tiny tmpfs, hostile images and names.
Windows are widened with rsync's bandwidth limit and the moment to strike is chosen by polling
the job's meta (bytes_done) in Redis, never by sleeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import paramiko
import pytest
import redis
import requests
from botocore import exceptions as botocore_exc
from glanceclient import exc as gexc
from keystoneauth1 import exceptions as ks_exc
from labconfig import write_migratio_config
from rq.job import Job
from rq.registry import StartedJobRegistry

from migratio.aws import clients
from migratio.conf.config import load_config
from migratio.conf.sites import AwsOptions, OpenStackOptions
from migratio.errors import (
    AuthError,
    CommandFailed,
    ConfigError,
    HostKeyError,
    ImageNotFound,
    NotEnoughSpace,
    PermanentError,
    TransientError,
    UnsafeImage,
)
from migratio.local.commands import Commands
from migratio.local.workdirs import remove_stale
from migratio.openstack import glance as glance_mod
from migratio.openstack import rsync, ssh
from migratio.openstack.headnode import RemoteGlance
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.locks import LockBusy, MigrationLock, holder_is_dead, process_start
from migratio.steps import openstack as os_steps
from migratio.steps.common import ensure_space
from tests.faults_helpers import CountingProxy, FaultRedis, Worker, alive, kill_matching, wait_for
from tests.test_openstack_steps import MemoryGlance, make_ctx, ours  # noqa: F401 (make_ctx is a fixture)

MiB = 1024 * 1024
# what a resumed transfer may send beyond the missing bytes: ssh control sessions, and the first
# bytes of a stream attempt before the head node answers that a partial copy is staged
RESUME_SLACK = 3 * MiB // 2
REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "atmosphere"
SECRETS = {
    "redis password": f"rds-{uuid.uuid4().hex}",
    "OS_PASSWORD": f"osp-{uuid.uuid4().hex}",
    "clouds.yaml token": f"tok-{uuid.uuid4().hex}",
    "AWS_SECRET_ACCESS_KEY": f"aws-{uuid.uuid4().hex}",
    "OS_AUTH_TOKEN": f"env-{uuid.uuid4().hex}",
}


# -- fixtures


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory):
    server = FaultRedis(tmp_path_factory.mktemp("fault-redis"), SECRETS["redis password"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def rclient(fault_redis):
    if not fault_redis.running() or not fault_redis.healthy():
        fault_redis.start()  # a test that failed while it was down must not break the next ones
    client = redis.Redis.from_url(fault_redis.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="module")
def proxy(lab):
    relay = CountingProxy(lab.head_node.port)
    yield relay
    relay.close()


class Env:
    """One test's migratio site: config, workers, and readers for what operators see."""

    def __init__(self, lab, fault_redis, client, proxy, tmp_path: Path):
        self.lab, self.fault_redis, self.redis, self.proxy, self.dir = lab, fault_redis, client, proxy, tmp_path
        self.workers: list[Worker] = []
        self.config_file = None
        self.config = None

    def configure(self, via_proxy: bool = True, site_b: dict | None = None, **config) -> None:
        head = self.lab.head_node
        known_hosts = self.dir / "known_hosts"
        key = " ".join(Path(head.known_hosts).read_text().split()[1:3])
        port = self.proxy.port if via_proxy else head.port
        known_hosts.write_text(f"[{head.host}]:{port} {key}\n")
        values = dict(redis_url=self.fault_redis.url, namespace=NAMESPACE, retries=3, retry_intervals=[1],
                      log_level="INFO", feedback_interval=0)  # every line: the tests compare them all
        values.update(config)
        self.config_file = write_migratio_config(
            self.lab, self.dir, site_b={"port": port, "known_hosts": str(known_hosts), "connect_timeout": 10,
                                        **(site_b or {})}, **values)
        self.config = load_config(self.config_file)

    def worker(self, env: dict[str, str] | None = None) -> Worker:
        worker = Worker(self.config_file, self.dir / f"worker{len(self.workers)}.err", env)
        self.workers.append(worker)
        return worker

    def enqueue(self, image_id: str, dest: str = "site-b") -> Job:
        return enqueue_migration(migration_queue(self.config, self.redis), self.config, image_id, dest,
                                 feedback=True)

    def job(self, job_id: str) -> Job:
        return Job.fetch(job_id, connection=self.redis)

    def meta(self, job_id: str) -> dict:
        try:
            return self.job(job_id).meta
        except Exception:
            return {}

    def status(self, job_id: str) -> str:
        status = self.job(job_id).get_status()
        return str(getattr(status, "value", status))

    def wait_ended(self, job_id: str, worker: Worker | None = None, timeout: float = 240) -> str:
        return wait_for(lambda: self.status(job_id) in ("finished", "failed") and self.status(job_id),
                        f"job {job_id} to end", timeout=timeout, proc=worker)

    def feedback(self, image_id: str | None = None) -> list[str]:
        """Status lines in Atmosphere's feedback queue, oldest first."""
        raw = self.redis.lrange(f"{NAMESPACE}:queue:feedback", 0, -1)
        items = [json.loads(r) for r in reversed(raw)]
        lines = [i["args"][3] for i in items if image_id is None or i["args"][0] == image_id]
        assert all(ln.endswith("\n") and "\n" not in ln[:-1] for ln in lines), lines
        return [ln[:-1] for ln in lines]

    def job_log(self, job_id: str) -> str:
        path = self.config.log_dir / "jobs" / f"{job_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logged_status_lines(self, job_id: str) -> list[str]:
        return [ln.split(" status: ", 1)[1] for ln in self.job_log(job_id).splitlines() if " status: " in ln]

    def lock_key(self, image_id: str) -> str:
        return f"migratio:{NAMESPACE}:lock:{image_id}:site-b"

    def staged(self, image_id: str, fmt: str = "qcow2") -> Path:
        return Path(self.lab.head_node.staging_dir) / f"{image_id}-site-a.{fmt}"

    def copies(self, image_id: str) -> list[dict]:
        return self.lab.site_b.api().list_images(source_uuid=image_id)

    def uploaded(self) -> int:
        return self.proxy.counts()[0]


@pytest.fixture
def env(lab, fault_redis, rclient, proxy, tmp_path, clean_lab_images):
    e = Env(lab, fault_redis, rclient, proxy, tmp_path)
    yield e
    for worker in e.workers:
        worker.stop()
    for path in Path(lab.head_node.staging_dir).iterdir():
        if path.is_file():
            path.unlink()


def progressed(env: Env, job_id: str, step: str, fraction: float, total: int):
    meta = env.meta(job_id)
    return meta.get("step") == step and (meta.get("bytes_done") or 0) >= fraction * total


def transfer_under_way(env: Env, img, fraction: float, **site_b):
    """(worker, job): a migration on a fresh worker, capped at 1 MiB/s so that it lasts, once
    `fraction` of it was transferred. `site_b`: more site conf keys."""
    env.configure(site_b={"bandwidth_limit": 1024, **site_b})  # KiB/s: a few seconds of transfer
    worker = env.worker()
    job = env.enqueue(img.id)
    wait_for(lambda: progressed(env, job.id, "transfer", fraction, img.size), f"{fraction:.0%} transferred",
             proc=worker)
    return worker, job


def only_active_copy(env: Env, img) -> dict:
    copies = env.copies(img.id)
    assert [c["status"] for c in copies] == ["active"], copies
    copy = copies[0]
    assert (copy["size"], copy["os_hash_value"]) == (img.size, img.os_hash_value)
    return copy


# -- 1. SIGKILL mid-transfer


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


# -- 2. killed mid-register


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


# -- 3. SIGTERM


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


# -- 4. Redis restarted mid-job


@pytest.mark.lab
def test_redis_restart_mid_job(env, glance_image):
    """Redis goes away during the transfer and stays away until the worker noticed it twice over
    (a buffered status line, a missed heartbeat): the job still finishes, its outcome is
    recorded once Redis is back, and Atmosphere gets every status line, in order."""
    img = glance_image(data_mib=6)
    worker, job = transfer_under_way(env, img, 0.2)

    env.fault_redis.stop()
    wait_for(lambda: "feedback: cannot push status lines" in worker.stderr, "a status line to be buffered",
             proc=worker)
    wait_for(lambda: f"heartbeat for job {job.id} not sent" in worker.stderr,
             "the worker to miss a heartbeat", proc=worker, timeout=90)
    env.fault_redis.start()

    assert env.wait_ended(job.id, worker) == "finished", env.job_log(job.id)
    copy = only_active_copy(env, img)
    assert env.job(job.id).return_value()["dest_image_id"] == copy["id"]
    wait_for(lambda: env.feedback(img.id) and env.feedback(img.id)[-1].startswith("Migration finished"),
             "the last status line in the feedback queue")
    assert env.feedback(img.id) == env.logged_status_lines(job.id)  # none lost, none reordered
    assert worker.proc.poll() is None  # the worker lived through it and goes on
    wait_for(lambda: worker.stderr.count("Scheduler for migration_site-a started") >= 2,
             "RQ's scheduler to be restarted", proc=worker, timeout=150)  # it died with Redis; retries need it
    second = glance_image(data_mib=1)
    assert env.wait_ended(env.enqueue(second.id).id, worker) == "finished"


# -- 5. the same image twice at once


@pytest.mark.lab
def test_same_image_to_the_same_site_twice_at_once(env, glance_image):
    img = glance_image(data_mib=6)
    env.configure(site_b={"bandwidth_limit": 1024}, lock_ttl=3)  # the lock must be refreshed to survive
    env.worker(), env.worker()
    first = env.enqueue(img.id)
    wait_for(lambda: env.meta(first.id).get("step") == "transfer", "the first job to transfer")
    second = env.enqueue(img.id)
    ttls = []
    while env.status(first.id) not in ("finished", "failed"):
        ttls.append(env.redis.ttl(env.lock_key(img.id)))
        time.sleep(0.2)
    assert env.status(first.id) == "finished", env.job_log(first.id)
    assert min(ttls[:-1]) > 0, ttls  # held (and refreshed) all along, several times its ttl
    assert len(ttls) > 3 * 5
    assert env.wait_ended(second.id) == "finished", env.job_log(second.id)

    copy = only_active_copy(env, img)
    assert env.job(second.id).return_value() == {"dest_image_id": copy["id"], "already_present": True}
    waits = [ln for ln in env.feedback(img.id) if ln.startswith("Waiting: ")]
    assert waits and waits[0] == f"Waiting: another job is already migrating image {img.id} to site site-b; will retry"
    assert env.feedback(img.id)[-1] == f"Image already present on site-b as {copy['id']}"
    assert env.job(second.id).retries_left == 3  # waiting used no retry
    assert not env.redis.exists(env.lock_key(img.id))


@pytest.mark.lab
def test_lock_is_released_after_a_failure(env):
    env.configure()
    env.worker()
    missing = str(uuid.uuid4())
    job = env.enqueue(missing)
    assert env.wait_ended(job.id) == "failed"
    assert env.meta(job.id)["error"] == f"image {missing} not found on site-a"
    assert not env.redis.exists(env.lock_key(missing))


LOCK_HOLDER = """\
import sys, time, redis
from migratio.queue.locks import MigrationLock
with MigrationLock(redis.Redis.from_url(sys.argv[1]), "ns", sys.argv[2], "site-b", int(sys.argv[3])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_of_a_killed_holder(rclient, fault_redis):
    """A SIGKILLed holder's lock stays (nobody refreshes it) until it expires; on the same host it
    is taken over at once; a holder on another host is waited for until the expiry."""
    image = str(uuid.uuid4())
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, fault_redis.url, image, "4"], cwd=REPO,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == b"held\n"
        key = f"migratio:ns:lock:{image}:site-b"
        value = rclient.get(key).decode()
        assert value.split()[1:3] == [socket.gethostname(), str(holder.pid)]
        start, ttls = time.monotonic(), []
        while time.monotonic() - start < 3 * 4:  # three times its ttl: alive only if refreshed
            ttls.append(rclient.ttl(key))
            time.sleep(0.1)
        assert min(ttls) > 0 and rclient.get(key).decode() == value
        with pytest.raises(LockBusy, match=f"another job is already migrating image {image} to site site-b"):
            MigrationLock(rclient, "ns", image, "site-b", 4).__enter__()
    finally:
        holder.kill()
        holder.wait()
    assert rclient.get(key).decode() == value  # left behind, no longer refreshed
    with MigrationLock(rclient, "ns", image, "site-b", 4) as lock:  # its process is gone: taken over
        assert rclient.get(key).decode() == lock.token
    assert not rclient.exists(key)

    rclient.set(key, "tok other-host.example 1234 5678", ex=2)  # a holder elsewhere: only expiry helps
    with pytest.raises(LockBusy):
        MigrationLock(rclient, "ns", image, "site-b", 4).__enter__()
    wait_for(lambda: not rclient.exists(key), "the foreign lock to expire", timeout=10)
    with MigrationLock(rclient, "ns", image, "site-b", 4):
        pass


def test_holder_liveness_is_judged_by_pid_and_start_time():
    me = socket.gethostname()
    assert not holder_is_dead(f"t {me} {os.getpid()} {process_start(os.getpid())}", me)
    assert holder_is_dead(f"t {me} {os.getpid()} {process_start(os.getpid()) + 1}", me)  # pid reused
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert holder_is_dead(f"t {me} {dead.pid} 1", me)
    assert not holder_is_dead(f"t elsewhere {dead.pid} 1", me)
    assert not holder_is_dead("other-job", me) and not holder_is_dead(f"t {me} x y", me)


# -- 6. destination down, link drops: classification


class _Key:
    def get_name(self):
        return "ssh-ed25519"

    def get_fingerprint(self):
        return b"\x01" * 16


SITE = OpenStackOptions(host="head", user="u", port=22, known_hosts=Path("/etc/kh"), key_file=Path("/k"))


def _http(cls, code):
    exc = cls("details")
    exc.code = code
    return exc


CLASSIFICATION = [
    # (where it is mapped, the external error, migratio class, retried?)
    ("rsync", lambda: rsync.failure(255, "ssh: connect to host head port 22: Connection refused", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(12, "rsync error: error in rsync protocol data stream (code 12)", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(30, "rsync error: timeout in data send/receive (code 30)", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(10, "rsync error: error in socket IO (code 10)", SITE), TransientError, True),
    ("rsync", lambda: rsync.failure(35, "rsync error: timeout waiting for daemon connection", SITE),
     TransientError, True),
    ("rsync", lambda: rsync.failure(255, "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", SITE),
     HostKeyError, False),
    ("rsync", lambda: rsync.failure(255, "Host key verification failed.", SITE), HostKeyError, False),
    ("rsync", lambda: rsync.failure(255, "u@head: Permission denied (publickey).", SITE), AuthError, False),
    ("rsync", lambda: rsync.failure(11, "rsync: write failed: No space left on device (28)", SITE),
     CommandFailed, False),
    ("rsync", lambda: rsync.failure(23, "rsync: link_stat failed: No such file or directory", SITE),
     CommandFailed, False),
    ("ssh connect", lambda: ssh._translate(paramiko.BadHostKeyException("head", _Key(), _Key()), "head:22", SITE),
     HostKeyError, False),
    ("ssh connect", lambda: ssh._translate(paramiko.AuthenticationException("no"), "head:22", SITE),
     AuthError, False),
    ("ssh connect", lambda: ssh._translate(FileNotFoundError(2, "No such file"), "head:22", SITE),
     ConfigError, False),
    ("ssh connect", lambda: ssh._translate(paramiko.PasswordRequiredException("pw"), "head:22", SITE),
     ConfigError, False),
    ("ssh connect", lambda: ssh._translate(socket.timeout("timed out"), "head:22", SITE), TransientError, True),
    ("ssh connect", lambda: ssh._translate(
        paramiko.ssh_exception.NoValidConnectionsError({("127.0.0.1", 22): ConnectionRefusedError()}),
        "head:22", SITE), TransientError, True),
    ("ssh connect", lambda: ssh._translate(EOFError(), "head:22", SITE), TransientError, True),
    ("ssh connect", lambda: ssh._translate(paramiko.SSHException("Error reading SSH protocol banner"),
                                              "head:22", SITE), TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPNotFound("gone"), "image x", "site-a", "x"),
     ImageNotFound, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPNotFound("gone"), "image list", "site-a"),
     PermanentError, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPUnauthorized("no"), "image x", "site-a"), AuthError, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPForbidden("no"), "image x", "site-a"), AuthError, False),
    ("glance api", lambda: glance_mod.translate(ks_exc.Unauthorized("no"), "image x", "site-a"), AuthError, False),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPServiceUnavailable("busy"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPInternalServerError("oops"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(_http(gexc.HTTPException, 429), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.CommunicationError("refused"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(ks_exc.ConnectFailure("refused"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(requests.ConnectionError("reset"), "image x", "site-a"),
     TransientError, True),
    ("glance api", lambda: glance_mod.translate(IOError("Corrupt image download. Checksum was x expected y"),
                                                "download of image x", "site-a"), TransientError, True),
    ("glance api", lambda: glance_mod.translate(gexc.HTTPBadRequest("bad"), "image x", "site-a"),
     PermanentError, False),
    ("glance api", lambda: glance_mod.translate(_http(gexc.HTTPException, 413), "upload", "site-b"),
     PermanentError, False),
    ("glance api", lambda: glance_mod.translate(ks_exc.EndpointNotFound("none"), "image x", "site-a"),
     PermanentError, False),
]


def _glance_cli_failure(code: int, stderr: str):
    class Shell:
        where = "head:22"

        def run(self, argv, env_file=None, timeout=None, pty=False, stdin=b""):
            return code, "", stderr
    try:
        RemoteGlance(Shell(), SITE, "site-b").delete(str(uuid.uuid4()))
    except CommandFailed as exc:
        return exc


def _shell_check_failure(code: int, stderr: str):
    shell = ssh.RemoteShell.__new__(ssh.RemoteShell)
    shell.where = "head:22"
    shell.run = lambda argv, env_file=None, timeout=None: (code, "", stderr)
    try:
        shell.check(["mkdir", "-p", "/x"])
    except CommandFailed as exc:
        return exc


def _client_error(code: str, status: int):
    return botocore_exc.ClientError({"Error": {"Code": code, "Message": "m"},
                                     "ResponseMetadata": {"HTTPStatusCode": status}}, "CreateSnapshot")


def _aws(exc):
    site = AwsOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:1", bucket="b")
    return clients.translate(exc, site, "CreateSnapshot")


def _command_timeout():
    try:
        Commands(logging.getLogger("t")).run(["sleep", "5"], timeout=0.2)
    except TransientError as exc:
        return exc


CLASSIFICATION += [
    ("remote glance", lambda: _glance_cli_failure(1, "HTTP 503 Service Unavailable"), CommandFailed, True),
    ("remote glance", lambda: _glance_cli_failure(1, "Unable to establish connection to http://glance:9292"),
     CommandFailed, True),
    ("remote glance", lambda: _glance_cli_failure(255, ""), CommandFailed, True),
    ("remote glance", lambda: _glance_cli_failure(1, "HTTP 403 Forbidden"), CommandFailed, False),
    ("remote glance", lambda: _glance_cli_failure(2, "sh: 1: .: cannot open /etc/openrc: No such file"),
     CommandFailed, False),
    ("remote command", lambda: _shell_check_failure(1, "curl: Connection refused"), CommandFailed, True),
    ("remote command", lambda: _shell_check_failure(1, "mkdir: Permission denied"), CommandFailed, False),
    ("local command", _command_timeout, TransientError, True),
    ("aws", lambda: _aws(_client_error("Throttling", 400)), TransientError, True),
    ("aws", lambda: _aws(_client_error("InternalError", 500)), TransientError, True),
    ("aws", lambda: _aws(_client_error("AccessDenied", 403)), AuthError, False),
    ("aws", lambda: _aws(_client_error("NoSuchBucket", 404)), PermanentError, False),
    ("aws", lambda: _aws(_client_error("InvalidParameterValue", 400)), PermanentError, False),
    ("aws", lambda: _aws(botocore_exc.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
     TransientError, True),
    ("aws", lambda: _aws(botocore_exc.NoCredentialsError()), AuthError, False),
    ("lock", lambda: LockBusy("another job is already migrating image x to site y; will retry"),
     TransientError, True),
    ("disk space", lambda: NotEnoughSpace("not enough space"), PermanentError, False),
    ("qemu-img", lambda: UnsafeImage("image has a backing file"), PermanentError, False),
]


@pytest.mark.parametrize("where, make, kind, retried", CLASSIFICATION,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CLASSIFICATION)])
def test_error_classification(where, make, kind, retried):
    """Every external error is mapped at its client boundary to one class that decides retrying:
    transient ones (refused, timeouts, 5xx, lost links) are retried with backoff, the others fail
    the job at once; each message is one line."""
    error = make()
    assert isinstance(error, kind), (where, error)
    assert error.retryable is retried, (where, error)
    assert "\n" not in str(error) and str(error)


@pytest.mark.lab
def test_head_node_down_is_retried_until_it_is_back(env, glance_image):
    img = glance_image(data_mib=1)
    env.configure(via_proxy=False, retries=5, retry_intervals=[3])
    sshd = env.lab.sshd
    sshd.stop()
    try:
        env.worker()
        job = env.enqueue(img.id)
        refused = (f"Migration attempt failed, will retry: ssh {env.lab.head_node.host}:{env.lab.head_node.port}: "
                   "connection refused")
        wait_for(lambda: refused in env.feedback(img.id), "a transient failure")
        assert env.meta(job.id)["state"] == "retrying"
    finally:
        sshd.start()
        env.lab.save()
    assert env.wait_ended(job.id) == "finished", env.job_log(job.id)
    only_active_copy(env, img)
    assert env.feedback(img.id)[-1].startswith("Migration finished")


@pytest.mark.lab
def test_link_drop_mid_transfer_is_retried_and_resumes(env, glance_image):
    """The TCP link under rsync is cut: a transient failure, the partial file is kept (not the
    cleanup of a final failure) and the retry resumes from it."""
    img = glance_image(data_mib=8)
    worker, job = transfer_under_way(env, img, 0.4)
    before = env.uploaded()
    assert env.proxy.drop() >= 1
    wait_for(lambda: any(ln.startswith("Migration attempt failed, will retry: ") for ln in env.feedback(img.id)),
             "the transient failure", proc=worker)
    assert env.wait_ended(job.id, worker) == "finished", env.job_log(job.id)
    assert env.uploaded() - before < img.size * 0.75
    only_active_copy(env, img)


@pytest.mark.lab
def test_wrong_host_key_fails_at_once_without_retries(env, glance_image, tmp_path):
    img = glance_image(data_mib=1)
    env.configure(via_proxy=False)
    key = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    head = env.lab.head_node
    known_hosts = Path(env.config.sites_dir.parent / "known_hosts")
    known_hosts.write_text(f"[{head.host}]:{head.port} " + " ".join(key.with_suffix(".pub").read_text().split()[:2]))
    env.worker()
    job = env.enqueue(img.id)
    assert env.wait_ended(job.id) == "failed"
    lines = env.feedback(img.id)
    assert lines.count("Migration started") == 1  # no retry
    assert lines[-1].startswith(f"Migration failed: host key of {head.host}:{head.port} does not match")
    assert env.job(job.id).retries_left == 0
    assert "HostKeyError" in env.job(job.id).latest_result().exc_string
    assert env.copies(img.id) == []


# -- 7. disk space and temp dirs


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
    from tests.helpers import config_factory, write_site

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


# -- 8. bad input


HOSTILE_VALUES = ['"; rm -rf / #', "$(touch {marker})", "`touch {marker}`", "x' ; touch {marker}; '", "a\nb | c |"]


@pytest.mark.lab
def test_hostile_name_and_properties_register_verbatim_and_run_nothing(env, glance_image, tmp_path):
    marker = tmp_path / "pwned"
    name = 'evil "; rm -rf / #$(touch {m}) `touch {m}`'.format(m=marker)
    props = {f"note_{i}": v.format(marker=marker) for i, v in enumerate(HOSTILE_VALUES)}
    img = glance_image(properties=props)
    patch = json.dumps([{"op": "replace", "path": "/name", "value": name}]).encode()
    env.lab.site_a.api().request("PATCH", f"/v2/images/{img.id}", patch,
                                 headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
    env.configure()
    env.worker()
    job = env.enqueue(img.id)
    assert env.wait_ended(job.id) == "finished", env.job_log(job.id)
    copy = only_active_copy(env, img)
    assert copy["name"] == name
    assert {k: copy[k] for k in props} == props
    assert not marker.exists()  # the head node is this machine: nothing ran there or here


@pytest.mark.lab
@pytest.mark.parametrize("kind", ["data-file", "huge"])
def test_hostile_qcow2_is_refused_before_any_transfer(env, glance_image, tmp_path, kind):
    img = glance_image(data_mib=1)
    evil = tmp_path / "evil.qcow2"
    if kind == "data-file":
        options = ["-o", f"data_file={tmp_path / 'secret-data.raw'}"]
        size, expected = "16M", "image has an external data file"
    else:
        options, size, expected = [], "20T", f"virtual size {20 * 1024 ** 4} bytes exceeds the limit"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(evil), size], check=True)
    store_file = env.lab.site_a.images_dir / img.id  # the store was tampered with
    store_file.write_bytes(evil.read_bytes())
    with open(store_file, "r+b") as f:
        f.truncate(img.size)
    env.configure()
    env.worker()
    job = env.enqueue(img.id)
    assert env.wait_ended(job.id) == "failed"
    assert env.meta(job.id)["error"].startswith(expected)
    assert env.job(job.id).retries_left == 0
    assert "transfer" not in env.meta(job.id)["steps_done"]
    assert env.copies(img.id) == [] and not env.staged(img.id).exists()


# -- 9. secrets


@pytest.mark.lab
def test_no_secret_reaches_any_output(env, glance_image):
    """A migration and a failed one with secrets configured everywhere (Redis password, clouds.yaml
    token, OS_PASSWORD / OS_AUTH_TOKEN / AWS keys in the worker's environment); then every output
    of the run is searched for them: logs, per-job logs, worker stderr, everything in Redis (job
    hashes with meta, results and tracebacks, the feedback queue)."""
    img = glance_image(data_mib=1)
    env.configure(log_level="DEBUG")
    clouds = env.config.clouds_file
    clouds.write_text(clouds.read_text().replace('"lab-token"', json.dumps(SECRETS["clouds.yaml token"])))
    assert SECRETS["clouds.yaml token"] in clouds.read_text()  # (the lab's Glance takes any token)
    key_body = Path(env.lab.head_node.key_file).read_text().splitlines()[1]
    worker = env.worker(env={"OS_PASSWORD": SECRETS["OS_PASSWORD"], "OS_AUTH_TOKEN": SECRETS["OS_AUTH_TOKEN"],
                             "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
                             "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper()})
    ok = env.enqueue(img.id)
    bad = env.enqueue(str(uuid.uuid4()))
    assert env.wait_ended(ok.id, worker) == "finished", env.job_log(ok.id)
    assert env.wait_ended(bad.id, worker) == "failed"

    outputs = {"worker stderr": worker.stderr}
    for path in env.config.log_dir.rglob("*.log"):
        outputs[str(path)] = path.read_text(errors="replace")
    for key in env.redis.keys("*"):
        outputs[f"redis {key.decode()}"] = _redis_value(env.redis, key)
    assert len(outputs) > 5 and any("Migration finished" in text for text in outputs.values())
    secrets = {**SECRETS, "private key": key_body}
    leaks = [(what, where) for what, secret in secrets.items() for where, text in outputs.items() if secret in text]
    assert leaks == []
    assert secrets["redis password"] in env.config_file.read_text()  # the search would have found it


def _redis_value(client, key) -> str:
    """Every value under `key`, as text (zlib-compressed fields, as RQ stores tracebacks, inflated)."""
    kind = client.type(key).decode()
    if kind == "string":
        parts = [client.get(key)]
    elif kind == "hash":
        parts = [part for kv in client.hgetall(key).items() for part in kv]
    elif kind == "list":
        parts = client.lrange(key, 0, -1)
    elif kind == "set":
        parts = list(client.smembers(key))
    elif kind == "zset":
        parts = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        parts = [part for _, fields in client.xrange(key) for kv in fields.items() for part in kv]
    else:
        parts = [client.dump(key) or b""]
    texts = []
    for part in parts:
        texts.append(part)
        try:
            texts.append(zlib.decompress(part))
        except zlib.error:
            pass
    return b"\n".join(texts).decode("utf-8", "replace")


# -- 2b. which active copy counts as "already present" (pure logic, in-memory destination)


def _right_copy(ctx, **changes):
    image = ctx.image
    return ours(ctx, "active", **{"disk_format": "qcow2", "size": image.size, "checksum": image.checksum,
                                  "os_hash_algo": "sha512", "os_hash_value": image.os_hash_value, **changes})


def test_an_active_copy_with_the_sources_bytes_is_already_present(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    copy = _right_copy(ctx)
    dest.images = {copy["id"]: copy}
    assert os_steps.Dedupe().run(ctx) is None
    assert ctx.finished and ctx.result == {"dest_image_id": copy["id"], "already_present": True}


@pytest.mark.parametrize("wrong", [{"size": 1}, {"checksum": "0" * 32}, {"os_hash_value": "f" * 128}])
def test_an_active_copy_with_other_bytes_is_deleted_and_migrated_again(make_ctx, wrong):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    copy = _right_copy(ctx, **wrong)
    dest.images = {copy["id"]: copy}
    assert os_steps.Dedupe().run(ctx) == "No copy on site-b yet"
    assert not ctx.finished and dest.deleted == [copy["id"]]


def test_a_converted_copy_is_checked_against_the_md5_claimed_when_it_was_sent(make_ctx, tmp_path):
    dest = MemoryGlance()
    ctx = make_ctx(dest, disk_format="raw")
    claimed = {"disk_format": "raw", "size": 123, "checksum": "a" * 32, os_steps.PAYLOAD_MD5: "a" * 32}
    good, bad = _right_copy(ctx, **claimed), _right_copy(ctx, **{**claimed, "checksum": "b" * 32})
    dest.images = {bad["id"]: bad, good["id"]: good}
    assert os_steps.Dedupe().run(ctx) is None
    assert ctx.result["dest_image_id"] == good["id"] and dest.deleted == [bad["id"]]

    unclaimed = _right_copy(ctx, disk_format="raw")  # e.g. made by the old tool: nothing to check it by
    dest.images = {unclaimed["id"]: unclaimed}
    with pytest.raises(PermanentError, match=f"image {unclaimed['id']} on site-b is an active copy of "
                                             f"{ctx.job.image_id} but its data cannot be checked"):
        os_steps.Dedupe().run(ctx)
    assert dest.deleted == [bad["id"]]  # never deleted without proof


def test_a_copy_in_another_format_needs_the_operator(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest, disk_format="raw")
    copy = _right_copy(ctx)  # qcow2, but the site conf now asks for raw
    dest.images = {copy["id"]: copy}
    with pytest.raises(PermanentError, match="has disk format qcow2, not raw: delete it to migrate the image again"):
        os_steps.Dedupe().run(ctx)
    assert dest.deleted == []


def test_a_converted_payload_is_registered_with_its_md5_claim(make_ctx, tmp_path):
    ctx = make_ctx(MemoryGlance(), disk_format="raw")
    converted = tmp_path / "converted.raw"
    converted.write_bytes(b"converted bytes")
    ctx.payload, ctx.payload_format, ctx.payload_hash = converted, "raw", {}
    properties = os_steps.record_fields(ctx)["properties"]
    assert properties[os_steps.PAYLOAD_MD5] == hashlib.md5(b"converted bytes").hexdigest()
    assert "owner_specified.openstack.md5" in properties and properties["source_uuid"] == ctx.job.image_id

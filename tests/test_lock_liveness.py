"""Who holds a migration lock, and whether it still runs: a per-worker token and its heartbeat key.

Containers often share a hostname (and see their own pids): a lock holder, or a worker running
a job, in another pid namespace must never be judged dead by a pid looked up here. Those holders
here are real processes in their own pid namespace (`unshare --pid`), with this host's hostname.
A job whose lock was lost (taken over, expired, not refreshed) stops before its next step.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from rq import Worker
from rq.job import Job

from migratio.errors import TransientError
from migratio.pipeline.runner import Step
from migratio.queue.connections import connect
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.keys import lock_key
from migratio.queue.locks import LockBusy, MigrationLock
from migratio.queue.recovery import recover_abandoned
from migratio.queue.worker import build_app, run_worker
from migratio.redact import Redactor
from support.lab.services import RedisServer
from tests.builders import config_factory, write_site
from tests.faults_helpers import descendants
from tests.gatestep import WorkerProcess, entered_key, open_key
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
IMAGE = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"

HOLDER = """\
import sys, time, redis
from migratio.queue.liveness import Heartbeat
from migratio.queue.locks import MigrationLock
client = redis.Redis.from_url(sys.argv[1])
heartbeat = Heartbeat(client, "ns", ttl=3).start()
with MigrationLock(client, "ns", sys.argv[2], "site-b", 30, heartbeat=heartbeat):
    print("held", flush=True)
    time.sleep(600)
"""


def in_own_pid_namespace(argv: list[str], stdout=None, stderr=None) -> subprocess.Popen:
    """`argv` as a child of the init of a new pid namespace (same hostname, same network), whose
    pids are chosen so that no process of this namespace has them (they look dead from here)."""
    first = free_pids()
    script = f'echo {first} > /proc/sys/kernel/ns_last_pid; "$@"; exit $?'
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script, "sh", *argv],
                            cwd=REPO, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def free_pids(count: int = 200) -> int:
    """A number N such that N+1 .. N+count are not pids of this namespace right now."""
    with open("/proc/sys/kernel/pid_max") as f:
        top = int(f.read())
    used = {int(e) for e in os.listdir("/proc") if e.isdigit()}
    for start in range(top - count - 2, 1000, -count):
        if not used & set(range(start + 1, start + count + 1)):
            return start
    pytest.skip("no free pid range in this namespace")


def kill_namespace(proc: subprocess.Popen) -> None:
    """SIGKILL unshare and the init of its namespace: the kernel then kills everything in it."""
    for pid in [proc.pid, *descendants(proc.pid)][:2]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.fixture
def rclient(redis_server, redis_client):
    return redis_client


def test_a_live_holder_in_another_pid_namespace_with_this_hostname_keeps_its_lock(redis_server, rclient):
    holder = in_own_pid_namespace([sys.executable, "-c", HOLDER, redis_server.url, IMAGE], stdout=subprocess.PIPE)
    key = lock_key("ns", IMAGE, "site-b")
    try:
        assert holder.stdout.readline() == b"held\n"
        value = rclient.get(key).decode()
        host, pid, token = value.split()[1], int(value.split()[2]), value.split()[4]
        assert host == socket.gethostname() and not os.path.exists(f"/proc/{pid}")  # looks dead from here
        with pytest.raises(LockBusy, match=f"another job is already migrating image {IMAGE} to site site-b"):
            MigrationLock(rclient, "ns", IMAGE, "site-b", 30).__enter__()
        assert rclient.get(key).decode() == value
    finally:
        kill_namespace(holder)
    assert rclient.get(key).decode() == value  # left behind; its worker's heartbeat runs out (3 s)
    wait_for(lambda: not rclient.exists(f"ns:migratio:alive:{token}"), "the holder's heartbeat to expire", 30)
    with MigrationLock(rclient, "ns", IMAGE, "site-b", 30) as lock:
        assert rclient.get(key).decode() == lock.token != value
    assert not rclient.exists(key)


def test_a_lock_taken_over_by_another_job_is_noticed_and_logged(rclient, caplog):
    with caplog.at_level(logging.INFO, logger="migratio.locks"):
        with MigrationLock(rclient, "ns", IMAGE, "site-b", 3) as lock:
            lock.check()  # still ours
            rclient.set(lock_key("ns", IMAGE, "site-b"), "someone else", ex=30)
            wait_for(lambda: lock.lost, "the refresh to notice", 30)
            with pytest.raises(TransientError, match=f"^lost the lock for image {IMAGE} to site site-b "
                                                     r"\(another job holds it now\); stopped before"):
                lock.check()
    assert rclient.get(lock_key("ns", IMAGE, "site-b")) == b"someone else"  # not released: not ours
    assert f"lost the lock for image {IMAGE} to site site-b (another job holds it now)" in caplog.text


def test_a_lock_that_cannot_be_refreshed_says_so_and_is_lost_after_its_ttl(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis")  # private: this test stops it
    server.start()
    client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        with caplog.at_level(logging.INFO, logger="migratio.locks"):
            lock = MigrationLock(client, "ns", IMAGE, "site-b", 3).__enter__()
            server.stop()
            wait_for(lambda: "could not refresh the lock" in caplog.text, "a logged refresh failure", 30)
            wait_for(lambda: lock.lost, "the lock to count as lost", 30)
            with pytest.raises(TransientError, match=f"^lost the lock for image {IMAGE} to site site-b "
                                                     r"\(not refreshed for 3 s"):
                lock.check()
            server.start()
            lock.__exit__(None, None, None)
    finally:
        server.stop()
        client.close()
    assert f"could not refresh the lock for image {IMAGE} to site site-b" in caplog.text


class GateStep(Step):
    """Waits until the test opens the gate (the job runs in a forked work-horse)."""

    name = "gate"

    def run(self, ctx):
        client = redis.Redis.from_url(ctx.config.redis_url)
        client.rpush("entered", ctx.job.job_id)
        wait_for(lambda: client.exists("open"), "the gate to open", 120)
        return None


class Register(Step):
    """Stands for the steps that register an image: records that it ran."""

    name = "register"

    def run(self, ctx):
        redis.Redis.from_url(ctx.config.redis_url).rpush("registered", ctx.job.job_id)
        ctx.dest_image_id = "registered"
        return "Image registered"


def test_a_job_that_lost_its_lock_stops_before_registering(tmp_path, redis_server, rclient):
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\n")
    app = build_app(config, connect(config, Redactor()), services=object(), feedback=False)
    app.steps_for = lambda site: [GateStep(), Register()]
    job = enqueue_migration(migration_queue(config, app.redis), config, IMAGE, "site-b")
    key = lock_key(config.namespace, IMAGE, "site-b")

    def take_over():  # another job takes the lock while this one waits at the gate
        wait_for(lambda: rclient.lrange("entered", 0, -1), "the job at the gate", 120)
        rclient.set(key, "another job's token", ex=600)
        rclient.set("open", 1)
    thread = threading.Thread(target=take_over)
    thread.start()
    run_worker(app, burst=True, ingest=False)
    thread.join(30)

    job = Job.fetch(job.id, connection=rclient)
    assert rclient.lrange("registered", 0, -1) == []
    assert job.get_status() == "failed"
    assert job.meta["error"].startswith(f"lost the lock for image {IMAGE} to site site-b (another job holds "
                                        "it now); stopped before step register")
    assert rclient.get(key) == b"another job's token"


def test_a_worker_keeps_a_heartbeat_named_by_its_token_and_its_locks_name_it(tmp_path, redis_server, rclient):
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "gated", "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n")
    worker = WorkerProcess(tmp_path / "config.yml", tmp_path / "worker.err")
    try:
        job = enqueue_migration(migration_queue(config, rclient), config, IMAGE, "gated")
        wait_for(lambda: rclient.lrange(entered_key("gated"), 0, -1), "the job at the gate", 120, proc=worker)
        [name] = [w.name for w in Worker.all(connection=rclient)]
        alive = f"atmosphere:migratio:alive:{name}"
        assert 0 < rclient.ttl(alive) <= 60
        assert rclient.get(lock_key("atmosphere", IMAGE, "gated")).decode().split()[4] == name
        rclient.set(open_key("gated"), 1)
        wait_for(lambda: Job.fetch(job.id, connection=rclient).get_status() == "finished", "the job", 60,
                 proc=worker)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        assert not rclient.exists(alive)  # a worker that stops says so at once
    finally:
        worker.stop()


def test_a_killed_workers_job_and_lock_are_taken_over_at_once_by_the_next_worker_here(
        tmp_path, redis_server, rclient):
    """The heartbeat of a worker SIGKILLed with its work-horse is still there; it names this pid
    namespace, where its pid is gone: the next worker hands the job back and takes the lock."""
    config = config_factory(tmp_path, redis_url=redis_server.url, retries=1, retry_intervals=[0])
    write_site(config.sites_dir, "gated", "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n")
    first = WorkerProcess(tmp_path / "config.yml", tmp_path / "first.err")
    second = None
    try:
        job = enqueue_migration(migration_queue(config, rclient), config, IMAGE, "gated")
        wait_for(lambda: rclient.lrange(entered_key("gated"), 0, -1), "the job at the gate", 120, proc=first)
        [name] = [w.name for w in Worker.all(connection=rclient)]
        for pid in [first.pid, *descendants(first.pid)]:
            os.kill(pid, signal.SIGKILL)
        first.wait(30)
        assert rclient.exists(f"atmosphere:migratio:alive:{name}")  # not expired yet
        rclient.set(open_key("gated"), 1)
        second = WorkerProcess(tmp_path / "config.yml", tmp_path / "second.err")
        wait_for(lambda: Job.fetch(job.id, connection=rclient).get_status() == "finished", "the resumed job",
                 60, proc=second)
        log = (config.log_dir / "jobs" / f"{job.id}.log").read_text()
        assert f"took over the lock for image {IMAGE} to site gated from a job that stopped" in log
        assert f"worker {name} (pid {first.pid} on {socket.gethostname()}) died" in second.stderr
        assert "left running by a worker that died: handed back to RQ" in second.stderr
    finally:
        first.stop()
        if second:
            second.stop()


def test_a_live_worker_in_another_pid_namespace_with_this_hostname_keeps_its_job(tmp_path, redis_server, rclient):
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "gated", "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n")
    with open(tmp_path / "worker.err", "wb") as err:
        other = in_own_pid_namespace([sys.executable, "-m", "tests.gatestep", "--config",
                                      str(tmp_path / "config.yml"), "worker"], stdout=err, stderr=err)
    try:
        queue = migration_queue(config, rclient)
        job = enqueue_migration(queue, config, IMAGE, "gated")
        wait_for(lambda: rclient.lrange(entered_key("gated"), 0, -1), "the job at the gate", 120)
        [worker] = Worker.all(connection=rclient)
        assert worker.hostname == socket.gethostname() and not os.path.exists(f"/proc/{worker.pid}")
        assert recover_abandoned(queue, config.name, namespace=config.namespace) == []
        assert Job.fetch(job.id, connection=rclient).get_status() == "started"
        with pytest.raises(LockBusy):
            MigrationLock(rclient, config.namespace, IMAGE, "gated", 30).__enter__()
        rclient.set(open_key("gated"), 1)
        wait_for(lambda: Job.fetch(job.id, connection=rclient).get_status() == "finished", "the job", 60)
    finally:
        kill_namespace(other)

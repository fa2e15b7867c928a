"""The same image twice at once, and the per (image, destination) lock when its holder fails or is killed."""

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from migratio.queue.liveness import Heartbeat, process_start
from migratio.queue.locks import LockBusy, MigrationLock, holder_is_dead
from support.lab.services import REPO
from tests.faults_helpers import wait_for
from tests.fixtures.faults import only_active_copy


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


def test_holder_liveness_is_judged_by_pid_and_start_time(rclient):
    """Pid + start time decide for a holder of this worker, or of a worker whose heartbeat names this
    pid namespace; a worker's heartbeat elsewhere (whatever its hostname) keeps its locks; a lock
    whose worker's heartbeat is gone is free."""
    me, own, start = socket.gethostname(), "own-worker", process_start(os.getpid())

    def dead(value):
        return holder_is_dead(value, rclient, "ns", own)
    assert not dead(f"t {me} {os.getpid()} {start} {own}")
    assert dead(f"t {me} {os.getpid()} {start + 1} {own}")  # pid reused
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert dead(f"t {me} {gone.pid} 1 {own}")
    Heartbeat(rclient, "ns", token="neighbour").beat()  # another worker in this pid namespace
    assert dead(f"t {me} {gone.pid} 1 neighbour") and not dead(f"t {me} {os.getpid()} {start} neighbour")
    rclient.set("ns:migratio:alive:elsewhere", f"{me} 1 1 boot-of-another-kernel pid:[4026531836]", ex=60)
    assert not dead(f"t {me} {gone.pid} 1 elsewhere")  # same hostname, another machine or container
    assert dead(f"t {me} {os.getpid()} {start} stopped")  # its worker's heartbeat is gone
    assert not dead("other-job") and not dead(f"t {me} x y {own}")
    assert not dead(f"t {me} {gone.pid} 1")  # an older migratio's lock: only its expiry frees it

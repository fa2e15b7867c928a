"""On worker start: jobs left `started` by a worker that died are handed back to RQ at once.

RQ finds such (abandoned) jobs by itself only after their heartbeat expired (job_monitoring
interval + 60 s, i.e. 90 s) and at its next registry maintenance (every 10 minutes). A worker
that starts beside a dead one (systemd restarting it after a crash or a SIGKILL) knows better:
an execution whose worker has unregistered, or whose worker's heartbeat key (see
migratio.queue.liveness) names this pid namespace and a process that no longer runs, is abandoned
now; a worker with a heartbeat elsewhere (another host or container, whatever its hostname) is
not. Those are expired in the StartedJobRegistry and RQ's own cleanup retries them (or fails
them when no retries are left), exactly as it would later.

The dead worker's scheduler lock is freed the same way: RQ lets it expire (61 s) and a new
worker only tries again at its next maintenance, so retries scheduled with a backoff would
wait up to 10 minutes after a crash.
"""

import logging
import socket
from dataclasses import dataclass
from typing import Callable

from redis import Redis
from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler

from migratio.pipeline.status import FAILED, INTERRUPTED, JobInfo, StatusSink
from migratio.queue import scripts
from migratio.queue.feedback import wants_feedback
from migratio.queue.liveness import process_start, runs, this_process, worker_process

log = logging.getLogger("migratio.recovery")


@dataclass(frozen=True)
class Abandoned:
    job_id: str
    composite_key: str
    why: str


def pid_alive(pid: int) -> bool:
    return process_start(pid) is not None


def find_abandoned(queue: Queue, host: str | None = None, alive: Callable[[int], bool] = pid_alive, *,
                   namespace: str) -> list[Abandoned]:
    """Executions in the queue's StartedJobRegistry whose worker is certainly gone (`namespace`:
    where the workers' heartbeat keys are)."""
    host = host or socket.gethostname()
    registry = StartedJobRegistry(queue.name, connection=queue.connection)
    found = []
    for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        worker_name = _worker_of(queue.connection, job_id, execution_id)
        if not worker_name:
            continue  # no record of who runs it: RQ's heartbeat expiry decides
        why = _why_dead(queue.connection, worker_name, host, alive, namespace)
        if why:
            found.append(Abandoned(job_id, f"{job_id}:{execution_id}", why))
    return found


def recover_abandoned(queue: Queue, config_name: str, status: StatusSink | None = None,
                      host: str | None = None, alive: Callable[[int], bool] = pid_alive, *,
                      namespace: str) -> list[str]:
    """Hand the abandoned jobs of `queue` to RQ's cleanup now; returns their ids."""
    abandoned = find_abandoned(queue, host, alive, namespace=namespace)
    if not abandoned:
        return []
    registry = StartedJobRegistry(queue.name, connection=queue.connection)
    for item in abandoned:
        _note(queue.connection, item, config_name, status)
        registry.connection.zadd(registry.key, {item.composite_key: 1}, xx=True)  # expired long ago
    registry.cleanup(timestamp=1)  # retries them (or fails them if no retries are left)
    return [item.job_id for item in abandoned]


def free_dead_scheduler_lock(queue: Queue, host: str | None = None,
                             alive: Callable[[int], bool] = pid_alive) -> bool:
    """Delete the queue's scheduler lock if its holder ran on this host and is gone."""
    host = host or socket.gethostname()
    key = RQScheduler.get_locking_key(queue.name)
    holder = queue.connection.get(key)
    if not holder:
        return False
    data = queue.connection.hgetall(SCHEDULER_KEY_TEMPLATE % holder.decode())
    pid = data.get(b"pid", b"").decode()
    if data.get(b"hostname", b"").decode() != host or not pid.isdigit() or alive(int(pid)):
        return False
    if scripts.load(queue.connection, "delete_if_equal")(keys=[key], args=[holder]):
        log.warning("freed the scheduler lock of %s held by a scheduler that died (pid %s)", queue.name, pid)
        return True
    return False


def _why_dead(redis: Redis, worker_name: str, host: str, alive: Callable[[int], bool],
              namespace: str) -> str | None:
    data = redis.hgetall(Worker.redis_worker_namespace_prefix + worker_name)
    if not data:
        return f"worker {worker_name} is gone"
    if data.get(b"death"):
        return f"worker {worker_name} has shut down"
    worker = worker_process(redis, namespace, worker_name)  # migratio names its RQ workers by their token
    if worker is not None:
        if worker.shares_pids_with(this_process()) and not runs(worker.pid, worker.start):
            return f"worker {worker_name} (pid {worker.pid} on {worker.host}) died"
        return None
    # no heartbeat: a migratio worker that stopped beating, or one from before heartbeats
    pid = data.get(b"pid", b"").decode()
    if data.get(b"hostname", b"").decode() == host and pid.isdigit() and not alive(int(pid)):
        return f"worker {worker_name} (pid {pid} on {host}) died"
    return None


def _note(redis: Redis, item: Abandoned, config_name: str, status: StatusSink | None) -> None:
    try:
        job = Job.fetch(item.job_id, connection=redis)
    except Exception:
        return
    retrying = bool(job.retries_left and job.retries_left > 0)
    log.warning("job=%s was interrupted (%s): %s", item.job_id, item.why,
                "handing it back to the queue" if retrying else "no retries left, it fails")
    job.meta.update(state="retrying" if retrying else "failed",
                    error=f"interrupted: the worker running it stopped ({item.why})")
    job.save_meta()
    if status is not None:
        info = JobInfo(job.id, str(job.meta.get("image_id", "?")), config_name, str(job.meta.get("dest", "?")),
                       wants_feedback(job.meta))
        status.emit(info, f"{INTERRUPTED} (its worker stopped); it will resume" if retrying else
                    f"{FAILED}: its worker stopped and no retries are left")


def _worker_of(redis: Redis, job_id: str, execution_id: str) -> str:
    try:
        return Execution.fetch(execution_id, job_id, connection=redis).worker_name
    except ValueError:  # the execution record expired
        return ""

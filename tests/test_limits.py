"""Per-site `max_concurrent`: two real workers (subprocesses) never run two jobs to the site at once.

The jobs run a gate step (tests/gatestep.py) that blocks until the test opens the gate, so
"at once" is decided by what is inside the gate, not by timing; the jobs' meta records when
each one entered and left.
"""

from contextlib import contextmanager

from rq import Worker
from rq.job import Job

from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.keys import rate_limit_key
from tests.builders import config_factory, write_site
from tests.gatestep import WorkerProcess, entered_key, open_key
from tests.waiting import wait_for

IMAGES = [f"{n}{n}{n}{n}{n}{n}{n}{n}-{n}{n}{n}{n}-4{n}{n}{n}-8{n}{n}{n}-{n * 12}" for n in "123"]


@contextmanager
def running_workers(tmp_path, config, redis, count=2):
    """`count` gate-step workers, registered with RQ; stopped on the way out."""
    workers = [WorkerProcess(tmp_path / "config.yml", tmp_path / f"worker{i}.err") for i in range(count)]
    try:
        queue = migration_queue(config, redis)
        wait_for(lambda: len(Worker.all(queue=queue)) == count, f"{count} workers registered", timeout=120)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def open_gate_and_wait(redis, site_id: str, jobs, what: str) -> None:
    redis.set(open_key(site_id), 1)
    wait_for(lambda: all(Job.fetch(j.id, connection=redis).get_status() == "finished" for j in jobs), what,
             timeout=120)


def test_max_concurrent_1_runs_one_job_at_a_time_across_two_workers(tmp_path, redis_server, redis_client):
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "slow-link",
               "type: openstack\nhost: h\nuser: u\npipeline: [gate]\nmax_concurrent: 1\n")
    queue = migration_queue(config, redis_client)
    with running_workers(tmp_path, config, redis_client):
        jobs = [enqueue_migration(queue, config, image, "slow-link") for image in IMAGES]
        assert [j.get_status() for j in jobs] == ["queued", "rate_limited", "rate_limited"]

        first = wait_for(lambda: redis_client.lrange(entered_key("slow-link"), 0, -1), "a job at the gate")
        assert first == [jobs[0].id.encode()]
        # Two idle workers, one job inside: the others are held by RQ's rate limiter, not queued.
        assert len(queue) == 0
        assert [Job.fetch(j.id, connection=redis_client).get_status() for j in jobs[1:]] == ["rate_limited"] * 2

        open_gate_and_wait(redis_client, "slow-link", jobs, "all jobs finished")

    metas = sorted((Job.fetch(j.id, connection=redis_client).meta for j in jobs), key=lambda m: m["gate_entered"])
    for before, after in zip(metas, metas[1:]):
        assert after["gate_entered"] >= before["gate_left"], metas  # never two inside at once
    assert redis_client.zcard(f"rq:rl:{rate_limit_key(config, 'slow-link')}:allowed") == 0  # slots released


def test_without_a_limit_two_workers_run_jobs_to_one_site_at_once(tmp_path, redis_server, redis_client):
    """The control: the same setup without max_concurrent does overlap, so the test above is not vacuous."""
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "fast-link", "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n")
    queue = migration_queue(config, redis_client)
    with running_workers(tmp_path, config, redis_client) as workers:
        jobs = [enqueue_migration(queue, config, image, "fast-link") for image in IMAGES[:2]]
        both = wait_for(lambda: len(redis_client.lrange(entered_key("fast-link"), 0, -1)) == 2,
                        "both jobs at the gate at once", timeout=120)
        assert both
        pids = {Job.fetch(j.id, connection=redis_client).meta["worker_pid"] for j in jobs}
        assert pids == {w.pid for w in workers}
        open_gate_and_wait(redis_client, "fast-link", jobs, "both jobs finished")

"""Redis restarted in the middle of a job: the job finishes, its outcome and every status line arrive."""

import pytest

from tests.faults_helpers import wait_for
from tests.fixtures.faults import only_active_copy, transfer_under_way


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

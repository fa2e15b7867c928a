"""The link to the destination: the head node down, the TCP link cut mid-transfer, an impostor host key."""

import pytest

from tests.faults_helpers import wait_for
from tests.fixtures.faults import only_active_copy, transfer_under_way
from tests.openstack_lab import impostor_known_hosts


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
    head = env.lab.head_node
    impostor_known_hosts(env.config.sites_dir.parent / "known_hosts", head.host, head.port)
    env.worker()
    job = env.enqueue(img.id)
    assert env.wait_ended(job.id) == "failed"
    lines = env.feedback(img.id)
    assert lines.count("Migration started") == 1  # no retry
    assert lines[-1].startswith(f"Migration failed: host key of {head.host}:{head.port} does not match")
    assert env.job(job.id).retries_left == 0
    assert "HostKeyError" in env.job(job.id).latest_result().exc_string
    assert env.copies(img.id) == []

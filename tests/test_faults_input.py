"""Hostile input: names and properties made to inject commands, qcow2 files made to read or fill."""

import subprocess

import pytest

from tests.fixtures.faults import only_active_copy
from tests.openstack_lab import rename, tamper

HOSTILE_VALUES = ['"; rm -rf / #', "$(touch {marker})", "`touch {marker}`", "x' ; touch {marker}; '", "a\nb | c |"]


@pytest.mark.lab
def test_hostile_name_and_properties_register_verbatim_and_run_nothing(env, glance_image, tmp_path):
    marker = tmp_path / "pwned"
    name = 'evil "; rm -rf / #$(touch {m}) `touch {m}`'.format(m=marker)
    props = {f"note_{i}": v.format(marker=marker) for i, v in enumerate(HOSTILE_VALUES)}
    img = glance_image(properties=props)
    rename(env.lab.site_a.api(), img.id, name)
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
    tamper(env.lab, img.id, img.size, evil)
    env.configure()
    env.worker()
    job = env.enqueue(img.id)
    assert env.wait_ended(job.id) == "failed"
    assert env.meta(job.id)["error"].startswith(expected)
    assert env.job(job.id).retries_left == 0
    assert "transfer" not in env.meta(job.id)["steps_done"]
    assert env.copies(img.id) == [] and not env.staged(img.id).exists()

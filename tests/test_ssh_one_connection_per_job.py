"""One SSH login per job: every step's commands, the stream and rsync are clients of the job's
OpenSSH ControlMaster, and that master (its process, its socket dir) is gone once the job ended,
whether it finished, failed, or its work-horse was killed.

Logins are counted in the lab sshd's own log; processes by their command line in /proc.
"""

import os
from pathlib import Path

import pytest

from migratio.openstack import openssh
from migratio.openstack.openssh import CONTROL_PREFIX, control_dir
from tests.faults_helpers import cmdline, wait_for
from tests.fixtures.faults import progressed
from tests.openstack_lab import head_site

pytestmark = pytest.mark.lab


def logins(lab) -> int:
    """Successful logins so far, as the head node's sshd logged them."""
    return (Path(lab.run_dir) / "sshd" / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def masters_of(job_id: str) -> list[int]:
    """Processes (any parent) that use the job's ssh control dir: its master and its clients."""
    where = str(control_dir(job_id))
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and any(where in a for a in cmdline(int(e)))]


def assert_nothing_left(job_id: str) -> None:
    assert masters_of(job_id) == []
    assert not control_dir(job_id).exists()


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "rsync"])
def test_a_job_logs_in_once_and_leaves_no_master(lab, glance_image, migrate_on_lab, stream):
    img = glance_image(data_mib=2)
    before = logins(lab)
    out = migrate_on_lab(img.id, stream=stream)
    assert out.status == "finished", out.meta.get("error")
    assert out.result["verified"]
    assert logins(lab) - before == 1
    assert_nothing_left(out.job.id)


def test_a_streamed_job_runs_three_commands_and_the_stream(lab, glance_image, migrate_on_lab, monkeypatch,
                                                          tmp_path):
    """Every remote command starts a shell there (with the user's rc files): dedupe's query, which
    installs the head-node client in the same command, the staging dir's df, and verify's query;
    the stream runs the installed client. (The commands are written down by the forked work-horse.)"""
    record, run = tmp_path / "commands", openssh.MasterShell.run

    def recording(self, argv, *args, **kwargs):
        with open(record, "a") as f:
            f.write(" ".join(map(str, argv)) + "\n")
        return run(self, argv, *args, **kwargs)

    monkeypatch.setattr(openssh.MasterShell, "run", recording)
    img = glance_image(data_mib=1)
    out = migrate_on_lab(img.id)
    assert out.status == "finished", out.meta.get("error")
    find, df, show = record.read_text().splitlines()
    assert find.startswith("sh -c ") and ".migratio-glance-" in find and " find source_uuid=" in find
    assert "df -Pk" in df
    assert ".migratio-glance-" in show and " show " in show and " - show " not in show


def test_a_failed_job_leaves_no_master(lab, glance_image, migrate_on_lab, tmp_path):
    """It fails on the head node after the login (its env file is missing there)."""
    img = glance_image(data_mib=1)
    before = logins(lab)
    out = migrate_on_lab(img.id, remote_env_file=str(tmp_path / "no-such-env"))
    assert out.status == "failed"
    assert "no-such-env" in out.meta["error"] or "failed" in out.meta["error"]
    assert logins(lab) - before == 1
    assert_nothing_left(out.job.id)


def test_a_killed_work_horse_leaves_no_master(env, glance_image):
    """The work-horse alone is SIGKILLed mid-stream (the OOM killer): its master dies with it
    (death signal), its worker removes the socket dir; the retried attempt logs in anew and
    its own master is gone once it finished."""
    img = glance_image(data_mib=8)
    env.configure(site_b={"bandwidth_limit": 1024})
    worker = env.worker()
    job = env.enqueue(img.id)
    wait_for(lambda: progressed(env, job.id, "transfer", 0.3, img.size) and masters_of(job.id),
             "the transfer under way", proc=worker)
    streams = worker.running("ssh")
    horse = worker.parent_of(streams[0])
    first = [p for p in masters_of(job.id) if worker.parent_of(p) == horse]
    assert first, "the job's master is a child of its work-horse"
    os.kill(horse, 9)
    wait_for(lambda: not any(p in masters_of(job.id) for p in first), "the killed horse's master to exit",
             timeout=30)

    assert env.wait_ended(job.id, worker) == "finished", env.job_log(job.id)
    wait_for(lambda: not masters_of(job.id) and not control_dir(job.id).exists(),
             "the retried attempt's master and dir to be gone", timeout=30)
    leftovers = [p.name for p in control_dir("x").parent.glob(f"{CONTROL_PREFIX}{job.id}*")]
    assert leftovers == []


def test_a_dropped_master_is_replaced_by_the_next_command(lab, tmp_path):
    """A link that dropped mid-job (the master gone): the next command, e.g. a cleanup, logs in
    again over the same socket path, host key still checked, and the dir goes at close."""
    directory = tmp_path / "ctl"
    shell = openssh.MasterShell.open(head_site(lab), directory)
    try:
        assert shell.check(["echo", "one"]) == "one\n"
        shell.master.proc.kill()
        shell.master.proc.wait()
        before = logins(lab)
        assert shell.check(["echo", "two"]) == "two\n"
        assert logins(lab) - before == 1
    finally:
        shell.close()
    assert not directory.exists() and not shell.master.alive()

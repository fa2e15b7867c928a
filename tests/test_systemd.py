"""The systemd units (as install.sh writes them) and the worker behaviour they rely on."""

import getpass
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from rq.job import Job

from migratio.queue.enqueue import enqueue_migration, migration_queue
from support.lab.services import REPO, free_port
from tests.builders import config_factory, write_site
from tests.gatestep import WorkerProcess, entered_key, open_key
from tests.waiting import wait_for

INSTALL = REPO / "support" / "systemd" / "install.sh"
IMAGE_1 = "11111111-1111-4111-8111-111111111111"
IMAGE_2 = "22222222-2222-4222-8222-222222222222"


def install(tmp_path, config_file, *args):
    units, logrotate = tmp_path / "units", tmp_path / "logrotate.d"
    proc = subprocess.run(
        [str(INSTALL), "--no-systemctl", "--unit-dir", str(units), "--logrotate-dir", str(logrotate),
         "--config", str(config_file), "--env-file", "/etc/migratio/test.env", *args],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return units, logrotate


def verify(units):
    """systemd-analyze verify on an instance of the template and on the target."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "migratio-worker@1.service"),
         str(units / "migratio.target")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    return proc.returncode, [ln for ln in (proc.stdout + proc.stderr).splitlines() if "migratio" in ln]


def unit_settings(path):
    settings = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def analyze():
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze not found: install Debian's systemd package (make deps)")


def test_installed_units_pass_systemd_analyze_verify(tmp_path, analyze):
    config = config_factory(tmp_path, job_timeout=7200)
    user = getpass.getuser()  # verify wants a user that exists; the real install creates `migratio`
    units, logrotate = install(tmp_path, tmp_path / "config.yml", "--user", user)

    code, complaints = verify(units)
    assert (code, complaints) == (0, [])

    worker = unit_settings(units / "migratio-worker@.service")
    assert worker["Type"] == ["exec"]
    assert worker["User"] == [user]
    assert worker["ExecStart"] == [f"{REPO}/.venv/bin/migratio --config {tmp_path / 'config.yml'} worker"]
    assert worker["KillMode"] == ["mixed"] and worker["KillSignal"] == ["SIGTERM"]
    assert worker["TimeoutStopSec"] == ["7500s"]  # job_timeout + 5 min: a job is never cut short
    assert worker["Restart"] == ["on-failure"] and worker["RestartPreventExitStatus"] == ["78"]
    assert worker["EnvironmentFile"] == ["-/etc/migratio/test.env"]
    assert worker["ReadWritePaths"] == [f"-{config.log_dir} -{config.work_dir}"]
    for hardening in ("NoNewPrivileges", "PrivateTmp"):
        assert worker[hardening] == ["yes"]
    assert worker["ProtectSystem"] == ["strict"]
    assert worker["PartOf"] == ["migratio.target"] and worker["WantedBy"] == ["migratio.target"]
    assert unit_settings(units / "migratio.target")["WantedBy"] == ["multi-user.target"]

    rotate = (logrotate / "migratio").read_text()
    assert f"{config.log_dir}/migratio.log {{" in rotate
    for directive in ("daily", "rotate 90", "compress", "nocreate"):
        assert f"\n    {directive}\n" in rotate
    directives = [ln.strip() for ln in rotate.splitlines() if not ln.lstrip().startswith("#")]
    assert "copytruncate" not in directives and not any("@" in d for d in directives)


def test_verify_reports_a_broken_unit(tmp_path, analyze):
    """The check above is not vacuous: the same verify call names a bad setting."""
    config_factory(tmp_path)
    units, _ = install(tmp_path, tmp_path / "config.yml", "--user", getpass.getuser())
    path = units / "migratio-worker@.service"
    path.write_text(path.read_text().replace("Type=exec", "Type=exec-please"))
    _, complaints = verify(units)
    assert any("Type" in line or "service type" in line for line in complaints), complaints


def test_install_refuses_a_bad_config_with_one_line(tmp_path):
    (tmp_path / "config.yml").write_text("name: site-a\nbogus_key: 1\n")
    proc = subprocess.run([str(INSTALL), "--no-systemctl", "--unit-dir", str(tmp_path / "u"),
                           "--logrotate-dir", str(tmp_path / "l"), "--config", str(tmp_path / "config.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "bogus_key" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "u").exists()


# -- the worker as the unit runs it

def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "migratio.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_config_exits_78_with_one_line(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"name": "site-a", "redis_url": "redis://127.0.0.1:1/0", "job_timout": 5}))
    proc = run_cli("--config", str(path), "worker")
    assert proc.returncode == 78  # RestartPreventExitStatus: systemd does not restart-loop it
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert str(path) in proc.stderr and "job_timout" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_missing_config_exits_78_with_one_line(tmp_path):
    proc = run_cli("--config", str(tmp_path / "nope.yml"), "worker")
    assert proc.returncode == 78
    assert proc.stderr == f"error: {tmp_path / 'nope.yml'}: file not found\n"


def test_redis_down_at_start_exits_non_zero_with_one_line(tmp_path):
    port = free_port()
    config_factory(tmp_path, redis_url=f"redis://:hunter2-secret@127.0.0.1:{port}/0")
    proc = run_cli("--config", str(tmp_path / "config.yml"), "worker")
    assert proc.returncode == 1  # Restart=on-failure: systemd tries again until Redis is back
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0")
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def gated(tmp_path, redis_server, redis_client):
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "site-b", "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n")
    workers = []

    def start():
        worker = WorkerProcess(tmp_path / "config.yml", tmp_path / f"worker{len(workers)}.err")
        workers.append(worker)
        return worker

    yield config, start, redis_client
    for worker in workers:
        worker.stop()


def test_sigterm_is_a_warm_shutdown(gated):
    """What systemctl stop does (KillMode=mixed: SIGTERM to the worker only): the running job
    finishes, the next one stays queued, the worker exits 0."""
    config, start, redis = gated
    queue = migration_queue(config, redis)
    worker = start()
    first = enqueue_migration(queue, config, IMAGE_1, "site-b")
    wait_for(lambda: redis.lrange(entered_key("site-b"), 0, -1), "the first job at the gate", proc=worker)
    second = enqueue_migration(queue, config, IMAGE_2, "site-b")

    os.kill(worker.pid, signal.SIGTERM)
    wait_for(lambda: "warm shut down requested" in worker.stderr, "the warm shutdown line", proc=worker)
    assert worker.proc.poll() is None  # still there: it waits for the job
    assert Job.fetch(first.id, connection=redis).get_status() == "started"

    redis.set(open_key("site-b"), 1)
    assert worker.wait() == 0, worker.stderr
    first = Job.fetch(first.id, connection=redis)
    assert first.get_status() == "finished"
    assert first.return_value() == {"dest_image_id": f"gated-{first.id}"}
    assert first.meta["gate_left"] >= first.meta["gate_entered"]
    assert Job.fetch(second.id, connection=redis).get_status() == "queued"  # not taken after SIGTERM
    assert redis.lrange(entered_key("site-b"), 0, -1) == [first.id.encode()]

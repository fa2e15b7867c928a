"""`migratio check`: each failure made real (stopped Redis/sshd, wrong host key, bad credentials,
missing tool, unreadable dir), against the lab and moto_server for the destinations."""

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from migratio.check.openstack import parse_df
from migratio.cli import main
from migratio.units import parse_size
from support.lab.services import REPO, RedisServer, free_port
from tests.builders import config_factory, write_site
from tests.openstack_lab import impostor_known_hosts, new_key

CLEAN_ENV = {name: None for name in os.environ if name.startswith(("OS_", "AWS_"))}


def run_check(config_file: Path, *args: str, env: dict | None = None):
    result = CliRunner().invoke(main, ["--config", str(config_file), "check", *args],
                                env={**CLEAN_ENV, **(env or {})})
    lines = result.output.splitlines()
    by_what = {}
    for line in lines[:-1]:
        status, _, rest = line.partition("  ")
        what, _, detail = rest.partition(": ")
        by_what[what] = (status, detail)
    return result.exit_code, by_what, lines


def test_invalid_config_is_one_fail_line(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("name: site-a\nredis_url: http://nope\n")
    code, checks, lines = run_check(path)
    assert code == 1
    assert lines == [f"FAIL  config: {path}: key 'redis_url' must start with redis://, rediss:// or unix:// "
                     f"-- fix: edit {path} (see config.yml.example)", "0 passed, 1 failed"]


def test_local_checks_pass_and_a_stopped_redis_fails(tmp_path, redis_server):
    stopped = RedisServer(tmp_path)
    stopped.start()
    stopped.stop()
    config = config_factory(tmp_path, redis_url=stopped.url)
    config.images_dir.mkdir()
    code, checks, lines = run_check(tmp_path / "config.yml")
    assert code == 1
    status, detail = checks["redis"]
    assert status == "FAIL" and detail.startswith(f"cannot reach Redis at {stopped.url}")
    assert detail.endswith("-- fix: start redis-server or fix 'redis_url' in config.yml")
    for what in ("config", "images dir", "work dir", "log dir", "tool qemu-img", "tool rsync", "tool ssh"):
        assert checks[what][0] == "PASS", lines
    assert checks["tool rsync"][1] == shutil.which("rsync")
    assert checks["sites"] == ("FAIL", f"no site confs in {config.sites_dir} -- fix: add one <site_id>.conf "
                                       f"per destination (see config/)")

    config_factory(tmp_path, redis_url=redis_server.url)
    code, checks, lines = run_check(tmp_path / "config.yml")
    assert checks["redis"][0] == "PASS" and "worker(s) on migration_site-a" in checks["redis"][1]


def test_missing_tool_on_path(tmp_path):
    config_factory(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("rsync", "ssh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    code, checks, _ = run_check(tmp_path / "config.yml", env={"PATH": str(bin_dir)})
    assert code == 1
    assert checks["tool qemu-img"] == ("FAIL", f"qemu-img not found on PATH ({bin_dir}) -- fix: apt-get install "
                                               f"qemu-utils (or add its directory to PATH of the service)")
    assert checks["tool rsync"] == ("PASS", str(bin_dir / "rsync"))


def test_images_dir_missing(tmp_path):
    config = config_factory(tmp_path)
    _, checks, _ = run_check(tmp_path / "config.yml")
    assert checks["images dir"][0] == "FAIL"
    assert checks["images dir"][1].startswith(f"{config.images_dir} is not a directory -- fix: let this user read")


def test_images_dir_unreadable(tmp_path, redis_server):
    """A dir this user may not read. Root reads everything, so as root the check runs without
    CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH against a dir owned by nobody (mode 0700)."""
    config = config_factory(tmp_path, redis_url=redis_server.url)
    config.images_dir.mkdir(mode=0o700)
    argv = [sys.executable, "-m", "migratio.cli", "--config", str(tmp_path / "config.yml"), "check"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.fail("setpriv (util-linux) is needed to drop root's capabilities")
        os.chown(config.images_dir, 65534, 65534)
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *argv]
    else:
        config.images_dir.chmod(0)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                              env={k: v for k, v in os.environ.items() if not k.startswith(("OS_", "AWS_"))})
    finally:
        config.images_dir.chmod(0o700)
    assert proc.returncode == 1, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if " images dir: " in ln)
    user = pwd.getpwuid(os.getuid()).pw_name
    assert line == (f"FAIL  images dir: {config.images_dir} is not readable by user {user} -- fix: let this user "
                    f"read {config.images_dir} (e.g. add it to group glance), or fix 'images_dir'")
    assert "PASS  redis: " in proc.stdout


def test_broken_and_unknown_site_confs(tmp_path):
    config = config_factory(tmp_path)
    write_site(config.sites_dir, "broken", "type: openstack\nhost: h\n")
    _, checks, _ = run_check(tmp_path / "config.yml", "broken", "nowhere")
    assert checks["broken"][0] == "FAIL" and "'user'" in checks["broken"][1]
    assert checks["nowhere"] == ("FAIL", f"conf: unknown destination site 'nowhere': no file "
                                         f"{config.sites_dir / 'nowhere.conf'} -- fix: fix "
                                         f"{config.sites_dir}/nowhere.conf")


def test_parsers():
    assert parse_size("10G") == 10 * 1024**3 and parse_size("500m") == 500 * 1024**2 and parse_size("42") == 42
    assert parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 100 40 60 40% /\n") == 60 * 1024


# -- OpenStack destination on the lab

@pytest.fixture
def lab_check(lab, tmp_path):
    """A config for site-a of the lab and site-b's head node as the destination."""
    head = lab.head_node
    config = config_factory(tmp_path, redis_url=lab.redis_url, images_dir=str(lab.site_a.images_dir))

    def site(**overrides):
        values = {"type": "openstack", "host": head.host, "port": head.port, "user": head.user,
                  "key_file": str(head.key_file), "known_hosts": str(head.known_hosts),
                  "staging_dir": str(head.staging_dir), "remote_env_file": str(head.env_file), **overrides}
        write_site(config.sites_dir, "site-b", yaml.safe_dump(values))

    def check(*args, image_url=lab.site_a.glance_url):
        return run_check(tmp_path / "config.yml", "--min-free", "1M", *args,
                         env={"OS_IMAGE_URL": image_url, "OS_AUTH_TOKEN": "lab-token"})

    site()
    return lab, site, check


@pytest.mark.lab
def test_everything_passes_on_the_lab(lab_check):
    lab, site, check = lab_check
    code, checks, lines = check()
    assert code == 0, "\n".join(lines)
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "PASS  config", "PASS  redis", "PASS  images dir", "PASS  work dir", "PASS  log dir",
        "PASS  tool qemu-img", "PASS  tool rsync", "PASS  tool ssh", "PASS  source glance",
        "PASS  site-b", "PASS  site-b", "PASS  site-b", "PASS  site-b", "PASS  site-b", "PASS  site-b",
        "PASS  site-b"]
    assert checks["source glance"][1].endswith("answers and accepts the credentials")
    assert checks["site-b"][1].startswith("staging dir: " + str(lab.head_node.staging_dir))
    assert f"PASS  site-b: glance queries: by python3 on {lab.head_node.host}, straight from the Glance API" in lines
    assert lines[-1] == "16 passed, 0 failed"

    site(remote_python="/nonexistent/python3")
    code, _, lines = check("site-b")
    queries = next(ln for ln in lines if "glance queries" in ln)
    assert code == 0 and queries.startswith("PASS  site-b: glance queries: by the glance CLI, about 1 s each "
                                            "(/nonexistent/python3: ")
    assert "No such file or directory" in queries


@pytest.mark.lab
def test_stopped_sshd(lab_check):
    lab, site, check = lab_check
    lab.sshd.stop()
    try:
        code, _, lines = check("site-b")
    finally:
        lab.restart("sshd")
    port = lab.head_node.port
    assert code == 1
    assert (f"FAIL  site-b: ssh login: ssh 127.0.0.1:{port}: connection refused -- fix: is sshd running on "
            f"127.0.0.1 port {port}, and reachable from here (firewall)?") in lines
    assert "SKIP  site-b: remote glance: not checked: ssh login failed" in lines


@pytest.mark.lab
def test_wrong_host_key(lab_check, tmp_path):
    lab, site, check = lab_check
    head = lab.head_node
    impostor_known_hosts(tmp_path / "known_hosts", head.host, head.port)
    site(known_hosts=str(tmp_path / "known_hosts"))
    code, checks, lines = check("site-b")
    assert code == 1
    login = next(ln for ln in lines if "ssh login" in ln)
    assert login.startswith(f"FAIL  site-b: ssh login: host key of {head.host}:{head.port} does not match "
                            f"known_hosts file {tmp_path / 'known_hosts'}")
    assert "-- fix: compare the host's fingerprint" in login

    (tmp_path / "known_hosts").write_text("")
    code, _, lines = check("site-b")
    assert (f"FAIL  site-b: host key: no key for [{head.host}]:{head.port} in {tmp_path / 'known_hosts'} -- fix: "
            f"ssh-keyscan -p {head.port} {head.host} >> {tmp_path / 'known_hosts'} (after checking the "
            f"fingerprint with the head node's admin)") in lines
    assert "SKIP  site-b: ssh login: not checked: host key unknown" in lines


@pytest.mark.lab
def test_bad_credentials(lab_check, tmp_path):
    lab, site, check = lab_check
    head = lab.head_node
    site(key_file=str(new_key(tmp_path / "stranger")))
    _, _, lines = check("site-b")
    login = next(ln for ln in lines if "ssh login" in ln)
    assert login == (f"FAIL  site-b: ssh login: ssh {head.user}@{head.host}:{head.port}: authentication failed "
                     f"with key {tmp_path / 'stranger'} -- fix: add the public key of {tmp_path / 'stranger'} to "
                     f"~{head.user}/.ssh/authorized_keys on {head.host}")

    bad_env = tmp_path / "bad-env.sh"
    bad_env.write_text(head.env_file.read_text().replace(lab.site_b.glance_url, f"http://127.0.0.1:{free_port()}"))
    site(remote_env_file=str(bad_env))
    code, checks, lines = check("site-b", image_url=f"http://127.0.0.1:{free_port()}")
    assert code == 1
    glance = next(ln for ln in lines if "remote glance" in ln)
    assert glance.startswith(f"FAIL  site-b: remote glance: `glance image-list` on {head.host} failed: ")
    assert f"-- fix: check the OS_* credentials in {bad_env} on {head.host}" in glance
    queries = next(ln for ln in lines if "glance queries" in ln)
    assert queries.startswith("FAIL  site-b: glance queries: remote glance image-show on site-b")
    assert "Unable to establish connection to http://127.0.0.1:" in queries
    assert checks["source glance"][0] == "FAIL" and "cannot reach Glance" in checks["source glance"][1]
    assert "PASS  site-b: staging dir" in "\n".join(lines)


@pytest.mark.lab
def test_staging_dir_without_enough_space(lab_check):
    lab, site, check = lab_check
    _, _, lines = check("site-b", "--min-free", "1000000T")
    staging = next(ln for ln in lines if "staging dir" in ln)
    assert staging.startswith(f"FAIL  site-b: staging dir: {lab.head_node.staging_dir} has ")
    assert "free, less than 1000000.0 TiB -- fix:" in staging


# -- AWS destination on moto_server

@pytest.fixture
def aws_check(moto_server, aws_env, tmp_path):
    config = config_factory(tmp_path)

    def check(**options):
        values = {"type": "aws", "region": "eu-west-1", "endpoint_url": moto_server.url, **options}
        write_site(config.sites_dir, "amazon", yaml.safe_dump(values))
        code, checks, lines = run_check(tmp_path / "config.yml", "amazon",
                                        env={k: os.environ[k] for k in os.environ if k.startswith("AWS_")})
        return [ln for ln in lines if ln.split("  ", 1)[-1].startswith("amazon")]

    return moto_server, check


@pytest.mark.moto
def test_aws_ebs_direct_passes_and_leaves_no_snapshot(aws_check, moto_bucket):
    moto, check = aws_check
    lines = check(bucket=moto_bucket)
    assert [ln.split(":")[1] for ln in lines] == [" conf", " aws credentials", " region", " bucket", " ebs direct"]
    assert all(ln.startswith("PASS") for ln in lines), lines
    snapshots = moto.client("ec2").describe_snapshots(
        Filters=[{"Name": "tag:migratio", "Values": ["check"]}])["Snapshots"]
    assert snapshots == []


@pytest.mark.moto
def test_aws_bad_credentials(aws_check, monkeypatch):
    moto, check = aws_check
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOBODYKNOWSTHIS1")
    with moto.enforcing_iam():
        lines = check()
    assert lines[1].startswith("FAIL  amazon: aws credentials: AWS denied GetCallerIdentity in eu-west-1")
    assert lines[1].endswith("-- fix: check the AWS credentials of the service (AWS_ACCESS_KEY_ID / "
                             "AWS_SECRET_ACCESS_KEY in its EnvironmentFile, or key 'profile' of the site conf)")
    assert lines[2:] == ["SKIP  amazon: region: not checked: aws credentials failed",
                         "SKIP  amazon: ebs direct: not checked: aws credentials failed"]


@pytest.mark.moto
def test_aws_vm_import_needs_bucket_and_role(aws_check, moto_bucket):
    moto, check = aws_check
    lines = check(**{"import": "vm-import", "bucket": "no-such-bucket-here"})
    assert any(ln.startswith("FAIL  amazon: bucket: bucket no-such-bucket-here does not exist") for ln in lines)
    assert any(ln.startswith("FAIL  amazon: vm-import role: ") and "vmimport" in ln for ln in lines), lines

    moto.client("iam").create_role(RoleName="vmimport", AssumeRolePolicyDocument=(
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"vmie.amazonaws.com"},'
        '"Action":"sts:AssumeRole"}]}'))
    try:
        lines = check(**{"import": "vm-import", "bucket": moto_bucket})
        assert all(ln.startswith("PASS") for ln in lines), lines
    finally:
        moto.client("iam").delete_role(RoleName="vmimport")

"""`migratio check`: preflight of this site and its destinations, one PASS/FAIL line per probe.

Each probe is a small function taking what it needs and returning the PASS detail, or raising
(Fail with the fix, or any MigratioError: its one-line message is the detail). `run_all` wires
them to the real config, Redis, Glance, SSH and AWS clients (all replaceable in `Inputs`).
"""

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from migratio.conf import sites as sites_mod
from migratio.conf.config import Config, load_config
from migratio.errors import AuthError, HostKeyError, ImageNotFound, MigratioError, TransientError
from migratio.openstack.headnode import RemoteGlance
from migratio.redact import Redactor
from migratio.units import format_size

TOOLS = {"qemu-img": "qemu-utils", "rsync": "rsync", "ssh": "openssh-client"}
PROBE_IMAGE = "00000000-0000-4000-8000-000000000000"  # an id no Glance has: 404 proves auth works


class Fail(Exception):
    """A probe failed: `detail` says what is wrong, `fix` what to do about it."""

    def __init__(self, detail: str, fix: str = ""):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass(frozen=True)
class Result:
    status: str  # PASS, FAIL or SKIP (a probe that needs a failed one)
    what: str
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def line(self) -> str:
        text = f"{self.status}  {self.what}: {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.status == "FAIL" and self.fix else text


@dataclass
class Inputs:
    """What the checks run against; tests replace any of the factories."""

    config_file: Path
    environ: Mapping[str, str]
    site_ids: list[str] = field(default_factory=list)  # empty: every site conf
    min_free: int = 10 * 1024**3
    redact: Callable[[str], str] = field(default_factory=Redactor)
    connect_redis: Callable[[Config, Callable[[str], str]], Any] | None = None
    services: Callable[[Config, Mapping[str, str]], Any] | None = None


class Runner:
    """Collects results; `probe` runs one check and turns its outcome into a line."""

    def __init__(self, redact: Callable[[str], str]):
        self.redact, self.results = redact, []

    def probe(self, what: str, check: Callable[[], str], fix: str | Callable[[Exception], str] = "") -> bool:
        try:
            detail = check()
        except Fail as exc:
            return self._add("FAIL", what, exc.detail, exc.fix or _fix(fix, exc))
        except MigratioError as exc:
            return self._add("FAIL", what, str(exc), _fix(fix, exc))
        except Exception as exc:  # a probe must never crash the whole check
            return self._add("FAIL", what, f"{type(exc).__name__}: {' '.join(str(exc).split())}", _fix(fix, exc))
        return self._add("PASS", what, detail)

    def skip(self, what: str, because: str) -> None:
        self._add("SKIP", what, f"not checked: {because}")

    def _add(self, status: str, what: str, detail: str, fix: str = "") -> bool:
        self.results.append(Result(status, what, self.redact(detail), self.redact(fix)))
        return status == "PASS"


def run_all(inputs: Inputs) -> list[Result]:
    runner = Runner(inputs.redact)
    holder: dict[str, Config] = {}
    if not runner.probe("config", lambda: check_config(inputs.config_file, holder),
                        f"edit {inputs.config_file} (see config.yml.example)"):
        return runner.results
    config = holder["config"]
    run_local(runner, config, inputs)
    services = _services(inputs, config)
    runner.probe("source glance", lambda: check_glance(services.source_glance(), "source"), glance_fix(config))
    for site_id in inputs.site_ids or sites_mod.list_sites(config.sites_dir):
        run_site(runner, config, site_id, services, inputs.min_free)
    if not inputs.site_ids and not sites_mod.list_sites(config.sites_dir):
        runner.probe("sites", lambda: _raise(Fail(f"no site confs in {config.sites_dir}",
                                                  "add one <site_id>.conf per destination (see config/)")))
    return runner.results


def run_local(runner: Runner, config: Config, inputs: Inputs) -> None:
    connect = inputs.connect_redis or _connect_redis
    runner.probe("redis", lambda: check_redis(connect, config, inputs.redact),
                 "start redis-server or fix 'redis_url' in config.yml")
    runner.probe("images dir", lambda: check_readable_dir(config.images_dir),
                 f"let this user read {config.images_dir} (e.g. add it to group glance), or fix 'images_dir'")
    runner.probe("work dir", lambda: check_writable_dir(config.work_dir),
                 f"create {config.work_dir} owned by this user, or fix 'work_dir'")
    runner.probe("log dir", lambda: check_writable_dir(config.log_dir),
                 f"create {config.log_dir} owned by this user, or fix 'log_dir'")
    path = inputs.environ.get("PATH", os.defpath)
    for tool, package in TOOLS.items():
        runner.probe(f"tool {tool}", lambda t=tool: check_tool(t, path),
                     f"apt-get install {package} (or add its directory to PATH of the service)")


def run_site(runner: Runner, config: Config, site_id: str, services, min_free: int) -> None:
    holder: dict[str, Any] = {}

    def load() -> str:
        holder["site"] = sites_mod.load_site(config.sites_dir, site_id)
        return f"{holder['site'].path} loads ({holder['site'].type})"

    if not runner.probe(f"{site_id}: conf", load, f"fix {config.sites_dir}/{site_id}.conf"):
        return
    site = holder["site"]
    if site.type == "openstack":
        run_openstack(runner, site, services, min_free)
    else:
        run_aws(runner, site, services)


# -- this site

def check_config(path: Path, holder: dict) -> str:
    config = load_config(path)
    holder["config"] = config
    return f"{path} is valid (name {config.name}, queue {config.queue_name})"


def check_redis(connect, config: Config, redact) -> str:
    from rq import Worker

    from migratio.queue.enqueue import migration_queue

    client = connect(config, redact)
    queue = migration_queue(config, client)
    workers = Worker.count(queue=queue)
    version = client.info("server").get("redis_version", "?")
    return (f"reachable at {redact(config.redis_url)} (Redis {version}); {len(queue)} queued, "
            f"{workers} worker(s) on {queue.name}")


def check_readable_dir(path: Path) -> str:
    if not path.is_dir():
        raise Fail(f"{path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise Fail(f"{path} is not readable by user {_user_name()}")
    try:
        count = sum(1 for _ in os.scandir(path))
    except OSError as exc:
        raise Fail(f"{path}: cannot list: {exc.strerror}") from None
    return f"{path} is readable ({count} entries)"


def check_writable_dir(path: Path) -> str:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".migratio-check-"):
            pass
    except OSError as exc:
        raise Fail(f"{path} is not writable: {exc.strerror}") from None
    free = shutil.disk_usage(path).free
    return f"{path} is writable ({format_size(free)} free)"


def check_tool(name: str, path: str) -> str:
    found = shutil.which(name, path=path)
    if not found:
        raise Fail(f"{name} not found on PATH ({path})")
    return f"{found}"


def check_glance(glance, label: str) -> str:
    """A GET of an image no Glance has: a 404 proves the endpoint answers and the credentials work."""
    name = " ".join(filter(None, [label, "Glance", getattr(glance, "site", None)]))
    try:
        glance.show(PROBE_IMAGE)
    except ImageNotFound:
        return f"{name} answers and accepts the credentials"
    return f"{name} answers"


def glance_fix(config: Config) -> Callable[[Exception], str]:
    where = f"cloud '{config.cloud}' in clouds.yaml" if config.cloud else "the OS_* variables of the service"

    def fix(exc: Exception) -> str:
        if isinstance(exc, AuthError):
            return f"check the credentials in {where}"
        if isinstance(exc, TransientError):
            return f"check the Glance/Keystone URL in {where} and that the service is up"
        return f"check {where} ('cloud' and 'clouds_file' in config.yml)"

    return fix


# -- OpenStack destinations

def run_openstack(runner: Runner, site, services, min_free: int) -> None:
    opts, sid = site.options, site.id
    glance_probes = ("remote glance", "glance queries") if opts.register.via == "ssh" else ("glance api",)
    dependent = (*glance_probes, "staging dir")
    if not runner.probe(f"{sid}: host key", lambda: check_host_key(opts), _keyscan_fix(opts)):
        for what in ("ssh login", *dependent):
            runner.skip(f"{sid}: {what}", "host key unknown")
        return
    shell: list = []

    def login() -> str:
        shell.append(services.remote(opts))
        code, _, err = shell[0].run(["true"], timeout=opts.connect_timeout)
        if code != 0:
            raise Fail(f"'true' exited {code} on {opts.host}: {err.strip()[-200:]}", "check the account's shell")
        return f"{opts.user}@{opts.host}:{opts.port} with {opts.key_file or 'default keys'}"

    if not runner.probe(f"{sid}: ssh login", login, lambda e: ssh_fix(e, opts)):
        for what in dependent:
            runner.skip(f"{sid}: {what}", "ssh login failed")
        return
    try:
        if opts.register.via == "ssh":
            runner.probe(f"{sid}: remote glance", lambda: check_remote_glance(shell[0], opts), _remote_glance_fix(opts))
            runner.probe(f"{sid}: glance queries", lambda: check_glance_queries(shell[0], opts, sid),
                         _remote_glance_fix(opts))
        else:
            runner.probe(f"{sid}: glance api", lambda: check_glance(services.glance(opts.register.cloud), sid),
                         f"check cloud '{opts.register.cloud}' in clouds.yaml")
        runner.probe(f"{sid}: staging dir", lambda: check_staging(shell[0], opts.staging_dir, min_free),
                     f"create {opts.staging_dir} writable by {opts.user} on {opts.host} with space, "
                     f"or set 'staging_dir' to a bigger filesystem")
    finally:
        shell[0].close()


def check_host_key(opts) -> str:
    import paramiko

    path = Path(opts.known_hosts)
    if not path.is_file():
        raise Fail(f"known_hosts file {path} not found")
    try:
        keys = paramiko.HostKeys(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise Fail(f"cannot read known_hosts file {path}: {exc}") from None
    name = opts.host if opts.port == 22 else f"[{opts.host}]:{opts.port}"
    found = keys.lookup(name)
    if not found:
        raise Fail(f"no key for {name} in {path}")
    return f"{name} is in {path} ({', '.join(sorted(found.keys()))})"


def ssh_fix(exc: Exception, opts) -> str:
    if isinstance(exc, HostKeyError) and "does not match" not in str(exc):
        return _keyscan_fix(opts)
    if isinstance(exc, HostKeyError):
        return (f"compare the host's fingerprint (ssh-keygen -lf on {opts.host}) with "
                f"`ssh-keygen -F {opts.host} -f {opts.known_hosts}`; replace the entry only if it is right")
    if isinstance(exc, AuthError):
        return f"add the public key of {opts.key_file or '~/.ssh/id_*'} to ~{opts.user}/.ssh/authorized_keys on {opts.host}"
    if isinstance(exc, TransientError):
        return f"is sshd running on {opts.host} port {opts.port}, and reachable from here (firewall)?"
    return "fix the ssh keys of the site conf (key_file, known_hosts)"


def _keyscan_fix(opts) -> str:
    return (f"ssh-keyscan -p {opts.port} {opts.host} >> {opts.known_hosts} "
            f"(after checking the fingerprint with the head node's admin)")


def check_remote_glance(shell, opts) -> str:
    argv = [opts.glance_command, "image-list", "--limit", "1"]
    code, _, err = shell.run(argv, env_file=opts.remote_env_file, timeout=120)
    if code != 0:
        last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), f"exit {code}")
        raise Fail(f"`{opts.glance_command} image-list` on {opts.host} failed: {last}")
    env = f" with {opts.remote_env_file}" if opts.remote_env_file else ""
    return f"`{opts.glance_command} image-list` works on {opts.host}{env}"


def check_glance_queries(shell, opts, site_id: str) -> str:
    """Whether dedupe/verify query Glance with the head node's Python (fast) or its glance CLI."""
    if not opts.remote_python:
        return "by the glance CLI (remote_python: null)"
    glance = RemoteGlance(shell, opts, site_id)
    with contextlib.suppress(ImageNotFound):
        glance.show(PROBE_IMAGE)
    if glance.cli_reason:
        return f"by the glance CLI, about 1 s each ({opts.remote_python}: {glance.cli_reason})"
    return f"by {opts.remote_python} on {opts.host}, straight from the Glance API"


def _remote_glance_fix(opts) -> str:
    if opts.remote_env_file:
        return (f"check the OS_* credentials in {opts.remote_env_file} on {opts.host} and that "
                f"'{opts.glance_command}' is installed there (python3-glanceclient)")
    return (f"set 'remote_env_file' in the site conf to a file with OS_* credentials on {opts.host}, "
            f"and install '{opts.glance_command}' there (python3-glanceclient)")


def check_staging(shell, staging_dir: str, min_free: int) -> str:
    probe = f"{staging_dir.rstrip('/')}/.migratio-check-{uuid.uuid4().hex[:8]}"
    code, _, err = shell.run(["sh", "-c", 'mkdir -p -- "$1" && touch -- "$2" && rm -f -- "$2"', "sh",
                              staging_dir, probe], timeout=60)
    if code != 0:
        raise Fail(f"{staging_dir} is not writable: {err.strip()[-200:] or f'exit {code}'}")
    code, out, err = shell.run(["df", "-Pk", staging_dir], timeout=60)
    free = parse_df(out) if code == 0 else None
    if free is None:
        raise Fail(f"cannot read free space of {staging_dir}: {err.strip()[-200:] or out.strip()[-200:]}")
    if free < min_free:
        raise Fail(f"{staging_dir} has {format_size(free)} free, less than {format_size(min_free)}")
    return f"{staging_dir} is writable ({format_size(free)} free)"


def parse_df(text: str) -> int | None:
    """Available bytes from `df -Pk` output (second line, fourth column, KiB)."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        return None
    cols = lines[-1].split()
    return int(cols[3]) * 1024 if len(cols) >= 4 and cols[3].isdigit() else None


# -- AWS destinations

def run_aws(runner: Runner, site, services) -> None:
    opts, sid = site.options, site.id
    clients: list = []

    def credentials() -> str:
        clients.append(services.aws(opts))
        ident = clients[0].sts.get_caller_identity()
        return f"valid: {ident.get('Arn')} (account {ident.get('Account')})"

    needs_bucket = bool(opts.bucket) or opts.import_mode == "vm-import"
    last = "ebs direct" if opts.import_mode == "ebs-direct" else "vm-import role"
    if not runner.probe(f"{sid}: aws credentials", credentials,
                        "check the AWS credentials of the service (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                        "in its EnvironmentFile, or key 'profile' of the site conf)"):
        for what in ("region", *(["bucket"] if needs_bucket else []), last):
            runner.skip(f"{sid}: {what}", "aws credentials failed")
        return
    aws = clients[0]
    runner.probe(f"{sid}: region", lambda: check_region(aws.ec2, opts.region),
                 "set 'region' to an EC2 region enabled for this account")
    if needs_bucket:
        runner.probe(f"{sid}: bucket", lambda: check_bucket(aws.s3, opts.bucket),
                     f"create bucket '{opts.bucket}' in {opts.region}, or allow s3:ListBucket and "
                     f"s3:PutObject on it for these credentials")
    if opts.import_mode == "ebs-direct":
        runner.probe(f"{sid}: ebs direct", lambda: check_ebs_direct(aws.ebs, aws.ec2),
                     "allow ebs:StartSnapshot, ebs:PutSnapshotBlock, ebs:CompleteSnapshot, ec2:DeleteSnapshot "
                     "and ec2:RegisterImage for these credentials")
    else:
        runner.probe(f"{sid}: vm-import role", lambda: check_role(iam_client(opts), opts.role_name),
                     f"create the service role '{opts.role_name}' trusted by vmie.amazonaws.com "
                     f"(AWS VM Import/Export prerequisites), or allow iam:GetRole")


def check_region(ec2, region: str) -> str:
    names = {r["RegionName"] for r in ec2.describe_regions().get("Regions", [])}
    if region not in names:
        raise Fail(f"region {region!r} is not enabled for this account ({len(names)} regions are)")
    return f"{region} is enabled"


def check_bucket(s3, bucket: str | None) -> str:
    if not bucket:
        raise Fail("import: vm-import needs key 'bucket' in the site conf", "add 'bucket: NAME' to the site conf")
    s3.head_bucket(Bucket=bucket)
    return f"bucket {bucket} is reachable"


def check_ebs_direct(ebs, ec2, timeout: float = 120) -> str:
    """Start, complete and delete an empty 1 GiB snapshot through the EBS direct API (the only way
    to know StartSnapshot is allowed is to call it), then a dry-run RegisterImage."""
    snap = ebs.start_snapshot(VolumeSize=1, Timeout=60, Description="migratio check (deleted right away)",
                              Tags=[{"Key": "migratio", "Value": "check"}])["SnapshotId"]
    try:
        ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=0)
        _wait_snapshot(ec2, snap, timeout)
        _dry_run_register(ec2, snap)
    finally:
        try:
            ec2.delete_snapshot(SnapshotId=snap)
        except MigratioError as exc:
            raise Fail(f"test snapshot {snap} could not be deleted: {exc}",
                       f"delete snapshot {snap} (tag migratio=check) by hand") from None
    return "StartSnapshot/CompleteSnapshot/DeleteSnapshot work and RegisterImage is allowed (dry run)"


def _dry_run_register(ec2, snap: str) -> None:
    try:
        ec2.register_image(Name="migratio-check", RootDeviceName="/dev/xvda", DryRun=True,
                           BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])
    except MigratioError as exc:
        if _aws_code(exc) != "DryRunOperation":
            raise


def _wait_snapshot(ec2, snap: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0].get("State")
        if state == "completed":
            return
        if state == "error" or time.monotonic() > deadline:
            raise Fail(f"test snapshot {snap} is {state} after CompleteSnapshot")
        time.sleep(1)


def check_role(iam, role_name: str) -> str:
    role = iam.get_role(RoleName=role_name)["Role"]
    return f"role {role_name} exists ({role.get('Arn')})"


def iam_client(opts):
    """IAM is not among the pipeline's clients: built here the same way (translated errors)."""
    import boto3

    from migratio.aws.clients import Translated, client_config, endpoint_for

    session = boto3.Session(profile_name=getattr(opts, "profile", None), region_name=opts.region)
    raw = session.client("iam", region_name=opts.region, config=client_config(opts),
                         endpoint_url=endpoint_for("iam", opts.endpoint_url))
    return Translated(raw, opts)


def _aws_code(exc: Exception) -> str | None:
    return getattr(exc, "aws_code", None)


# -- helpers


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _fix(fix, exc: Exception) -> str:
    return fix(exc) if callable(fix) else fix


def _raise(exc: Exception):
    raise exc


def _connect_redis(config: Config, redact):
    from migratio.queue.worker import connect

    return connect(config, redact)


def _services(inputs: Inputs, config: Config):
    if inputs.services:
        return inputs.services(config, inputs.environ)
    from migratio.pipeline.services import default_services

    return default_services(config, inputs.environ)

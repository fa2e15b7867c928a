"""Probes of OpenStack: this site's Glance, and each destination's head node (host key, SSH login,
remote glance and its credentials, how queries run there, the staging dir)."""

import contextlib
import uuid
from typing import Callable

from migratio.check.probe import Fail, Runner
from migratio.check.staging import Leftovers, check_leftovers
from migratio.conf.config import Config
from migratio.conf.sites import OpenStackOptions
from migratio.errors import AuthError, HostKeyError, ImageNotFound, TransientError
from migratio.openstack import compression
from migratio.openstack.glance import GlanceClient
from migratio.openstack.headnode import HeadNodeGlance
from migratio.openstack.ssh import RemoteShell, check_host_key, last_line
from migratio.openstack.staging_space import parse_df
from migratio.pipeline.services import Services
from migratio.units import format_size

PROBE_IMAGE = "00000000-0000-4000-8000-000000000000"  # an id no Glance has: 404 proves auth works


def run_source(runner: Runner, config: Config, services: Services) -> None:
    runner.probe("source glance", lambda: check_glance(services.source_glance(), "source"), glance_fix(config))


def run_openstack(runner: Runner, site_id: str, opts: OpenStackOptions, services: Services, min_free: int,
                  leftovers: Leftovers | None = None, limit: int | None = None) -> None:
    """Host key, then SSH login, then what needs the login; a failed step skips the ones after it.
    `limit`: the site's bandwidth_limit (KiB/s), which `compress: auto` depends on.

    With `leftovers`, the staging dir must also hold no stale staged file of this site."""
    sid = site_id
    glance_probes = ("remote glance", "glance queries") if opts.register.via == "ssh" else ("glance api",)
    dependent = (*glance_probes, "staging dir")
    if not runner.probe(f"{sid}: host key", lambda: check_host_key(opts), keyscan_fix(opts)):
        for what in ("ssh login", *dependent):
            runner.skip(f"{sid}: {what}", "host key unknown")
        return
    shell = runner.value(f"{sid}: ssh login", lambda: login(services, opts), lambda e: ssh_fix(e, opts))
    if shell is None:
        for what in dependent:
            runner.skip(f"{sid}: {what}", "ssh login failed")
        return
    with shell:
        if opts.register.via == "ssh":
            runner.probe(f"{sid}: remote glance", lambda: check_remote_glance(shell, opts), remote_glance_fix(opts))
            runner.probe(f"{sid}: glance queries", lambda: check_glance_queries(shell, opts, sid),
                         remote_glance_fix(opts))
            if opts.stream:
                runner.probe(f"{sid}: zstd", lambda: check_zstd(shell, opts, sid, limit),
                             f"install zstd on {opts.host} and on this worker, or set 'compress: false'")
        else:
            runner.probe(f"{sid}: glance api", lambda: check_glance(services.glance(opts.register.cloud), sid),
                         f"check cloud '{opts.register.cloud}' in clouds.yaml")

        def staging() -> str:
            detail = check_staging(shell, opts.staging_dir, min_free)
            return detail + (check_leftovers(shell, opts.staging_dir, opts.host, leftovers) if leftovers else "")

        runner.probe(f"{sid}: staging dir", staging,
                     f"create {opts.staging_dir} writable by {opts.user} on {opts.host} with space, "
                     f"or set 'staging_dir' to a bigger filesystem")


# -- Glance by its API (this site, and destinations registering with via: api)

def check_glance(glance: GlanceClient, label: str) -> str:
    """A GET of an image no Glance has: a 404 proves the endpoint answers and the credentials work."""
    name = " ".join(filter(None, [label, "Glance", glance.site]))
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


# -- the head node

def login(services: Services, opts: OpenStackOptions) -> tuple[RemoteShell, str]:
    """An open shell on the head node, once `true` ran there."""
    shell = services.remote(opts)
    try:
        code, _, err = shell.run(["true"], timeout=opts.connect_timeout)
        if code != 0:
            raise Fail(f"'true' exited {code} on {opts.host}: {err.strip()[-200:]}", "check the account's shell")
    except BaseException:
        shell.close()
        raise
    return shell, f"{opts.user}@{opts.host}:{opts.port} with {opts.key_file or 'default keys'}"


def keyscan_fix(opts: OpenStackOptions) -> str:
    return (f"ssh-keyscan -p {opts.port} {opts.host} >> {opts.known_hosts} "
            f"(after checking the fingerprint with the head node's admin)")


def ssh_fix(exc: Exception, opts: OpenStackOptions) -> str:
    if isinstance(exc, HostKeyError) and "does not match" not in str(exc):
        return keyscan_fix(opts)
    if isinstance(exc, HostKeyError):
        return (f"compare the host's fingerprint (ssh-keygen -lf on {opts.host}) with "
                f"`ssh-keygen -F {opts.host} -f {opts.known_hosts}`; replace the entry only if it is right")
    if isinstance(exc, AuthError):
        key = opts.key_file or "~/.ssh/id_*"
        return f"add the public key of {key} to ~{opts.user}/.ssh/authorized_keys on {opts.host}"
    if isinstance(exc, TransientError):
        return f"is sshd running on {opts.host} port {opts.port}, and reachable from here (firewall)?"
    return "fix the ssh keys of the site conf (key_file, known_hosts)"


def check_remote_glance(shell: RemoteShell, opts: OpenStackOptions) -> str:
    argv = [*opts.glance_argv, "image-list", "--limit", "1"]  # the words the worker runs
    code, _, err = shell.run(argv, env_file=opts.remote_env_file, timeout=120)
    if code != 0:
        last = last_line(err) or f"exit {code}"
        raise Fail(f"`{opts.glance_command} image-list` on {opts.host} failed: {last}")
    env = f" with {opts.remote_env_file}" if opts.remote_env_file else ""
    return f"`{opts.glance_command} image-list` works on {opts.host}{env}"


def check_glance_queries(shell: RemoteShell, opts: OpenStackOptions, site_id: str) -> str:
    """Whether dedupe/verify query Glance with the head node's Python (fast) or its glance CLI."""
    if not opts.remote_python:
        return "by the glance CLI (remote_python: null)"
    glance = HeadNodeGlance(shell, opts, site_id)
    with contextlib.suppress(ImageNotFound):
        glance.show(PROBE_IMAGE)
    if glance.cli_reason:
        return f"by the glance CLI, about 1 s each ({opts.remote_python}: {glance.cli_reason})"
    return f"by {opts.remote_python} on {opts.host}, straight from the Glance API"


def check_zstd(shell: RemoteShell, opts: OpenStackOptions, site_id: str, limit: int | None) -> str:
    """Whether the stream can be compressed: zstd on the head node (with the stream's PATH) and here."""
    if opts.compress is False:
        return "not used (compress: false): images are streamed uncompressed"
    remote = compression.remote_version(shell, opts.remote_env_file)
    local = compression.local_program()
    missing = " and ".join(w for w, ok in ((f"the head node {opts.host}", remote), ("this worker", local)) if not ok)
    if missing and opts.compress is True:
        raise Fail(f"zstd is not installed on {missing}: site {site_id} has 'compress: true', so every stream fails")
    if missing:
        return (f"zstd is not installed on {missing}: images to {site_id} are streamed uncompressed "
                "(compress: auto); install it to compress them on slow links")
    if opts.compress is True:
        return f"{remote} on {opts.host}: streams to {site_id} are compressed (compress: true)"
    when = ("when a sample of the image compresses" if compression.link_capped(limit) else
            f"only on a link capped at {compression.AUTO_LIMIT} KiB/s (1 Gbit/s) or less, and bandwidth_limit "
            f"is {limit or 'not set'}: not now")
    return f"{remote} on {opts.host}: streams to {site_id} are compressed {when} (compress: auto)"


def remote_glance_fix(opts: OpenStackOptions) -> str:
    if opts.remote_env_file:
        return (f"check the OS_* credentials in {opts.remote_env_file} on {opts.host} and that "
                f"'{opts.glance_command}' is installed there (python3-glanceclient)")
    return (f"set 'remote_env_file' in the site conf to a file with OS_* credentials on {opts.host}, "
            f"and install '{opts.glance_command}' there (python3-glanceclient)")


def check_staging(shell: RemoteShell, staging_dir: str, min_free: int) -> str:
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

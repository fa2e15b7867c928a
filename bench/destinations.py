"""The destination site as the benchmark sees it: the lab's (loopback) or one behind a veth pair."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.netns import Link, NetnsGlanceSite, NetnsSshd
from support.lab.images import GlanceAPI
from support.lab.lab import HEAD_ENV, HEAD_TOKEN, Lab

SSH_OPTIONS = ("-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
               "-o", "GlobalKnownHostsFile=/dev/null", "-o", "Compression=no")


@dataclass
class Destination:
    """site-b's head node (sshd) and Glance; `link` is set when they sit behind the veth pair."""

    name: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    env_file: Path      # sourced on the head node before `glance`
    staging_dir: Path   # migratio's staging dir on the head node
    tmp_dir: Path       # the legacy flow's "/tmp" on the head node
    glance_url: str     # reachable from the worker's namespace (for the benchmark's own setup)
    link: Link | None = None

    def ssh_argv(self, *remote: str, cipher: str | None = None) -> list[str]:
        """ssh to the head node (`remote` is one shell line); `cipher` None keeps ssh's default."""
        argv = ["ssh", "-p", str(self.port), "-i", str(self.key_file),
                "-o", f"UserKnownHostsFile={self.known_hosts}", *SSH_OPTIONS]
        if cipher:
            argv += ["-o", f"Ciphers={cipher}"]
        return [*argv, f"{self.user}@{self.host}", *remote]

    def with_env(self, *argv: str) -> str:
        """A remote shell line running argv after sourcing the head node's env file."""
        return f". {shlex.quote(str(self.env_file))} && " + shlex.join(argv)

    def api(self) -> GlanceAPI:
        return GlanceAPI(self.glance_url)

    def site_conf(self, **extra) -> dict:
        """migratio's site conf for this destination (YAML keys)."""
        return {"type": "openstack", "host": self.host, "port": self.port, "user": self.user,
                "key_file": str(self.key_file), "known_hosts": str(self.known_hosts),
                "staging_dir": str(self.staging_dir), "remote_env_file": str(self.env_file), **extra}

    def delete_images(self, keep: set[str]) -> int:
        """Delete every image not in `keep` (what a flow registered); returns how many."""
        api, n = self.api(), 0
        for image in api.list_images():
            if image["id"] not in keep:
                n += api.delete_image(image["id"])
        return n


def loopback(lab: Lab, scratch: Path) -> Destination:
    """The lab as it is: head node sshd and site-b Glance on 127.0.0.1."""
    head, site = lab.head_node, lab.site_b
    tmp = scratch / "loopback-head-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return Destination("loopback", head.host, head.port, head.user, head.key_file, head.known_hosts,
                       head.env_file, head.staging_dir, tmp, site.glance_url)


class NetnsSite:
    """site-b again, inside a network namespace behind a veth pair: its own sshd and Glance.

    `start()` creates the link and starts both (in parallel, Glance is slow to boot);
    `stop()` stops them and removes the namespace and the pair. Use it as a context manager.
    """

    def __init__(self, lab: Lab, directory: Path, subnet: str | None = None):
        self.dir = directory
        self.link = Link(subnet=subnet)
        venv, db = Path(lab.info["venv"]), Path(lab.info["pristine_db"])
        self.sshd = NetnsSshd(directory / "sshd", self.link)
        self.glance = NetnsGlanceSite("site-b", directory / "site-b", venv, db, self.link)
        self.venv = venv
        self.destination: Destination | None = None

    def start(self) -> Destination:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.link.up()
        try:
            for service in (self.glance, self.sshd):
                service.spawn()
            for service in (self.sshd, self.glance):
                service.wait_ready()
        except BaseException:
            self.stop()
            raise
        env_file = self.glance.dir / "head-env.sh"
        env_file.write_text(HEAD_ENV.format(
            site="site-b (benchmark, in its netns)", url=shlex.quote(self.glance.glance_url),
            token=HEAD_TOKEN, bin=shlex.quote(str(self.venv / "bin"))))
        for sub in ("staging", "head-tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        self.destination = Destination(
            "veth", self.link.ns_addr, self.sshd.port, lab_user(), self.sshd.client_key,
            self.sshd.known_hosts, env_file, self.dir / "staging", self.dir / "head-tmp",
            self.glance.glance_url, self.link)
        return self.destination

    def stop(self) -> None:
        for service in (self.glance, self.sshd):
            try:
                service.stop()
            except Exception as exc:  # keep tearing down
                print(f"bench: stopping {service.name} failed: {exc}")
        self.link.down()

    def __enter__(self) -> Destination:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def lab_user() -> str:
    import getpass

    return getpass.getuser()


def remote(dest: Destination, line: str, timeout: float = 3600, env: dict | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run one shell line on the head node over ssh (the benchmark's own control commands)."""
    proc = subprocess.run(dest.ssh_argv(line), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"on {dest.name} head node: {line[:120]} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
    return proc

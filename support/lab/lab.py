"""The migratio lab: two real Glance sites, site-b's head node (sshd) and Redis.

``Lab`` starts, adopts and stops them; ``python3 -m support.lab`` is its command line.
Layout under ``root`` (default ``.lab``)::

    glance-venv/         glance 33 + gunicorn + glanceclient, made once with uv
    cache/               a db_sync'ed pristine glance sqlite, copied for every site
    run/                 one running lab (``--run-dir`` to choose another)
      lab.json           everything a client needs: URLs, paths, head node, pids
      redis/ sshd/ site-a/ site-b/   per-service dirs with their logs

``start`` reuses a lab that lab.json describes if all its processes are still
ours and healthy; otherwise it stops the leftovers, wipes the run dir and
starts everything afresh.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.lab.glance_venv import ensure_glance_venv, ensure_pristine_db
from support.lab.images import GlanceAPI
from support.lab.services import HOST, GlanceSite, RedisServer, Sshd

SITES = ("site-a", "site-b")
HEAD_SITE = "site-b"
HEAD_TOKEN = "lab-token"


# --------------------------------------------------------------------------- descriptions


@dataclass
class SiteInfo:
    name: str
    glance_url: str
    images_dir: Path
    log: Path
    port: int
    dir: Path
    project_id: str

    def api(self, **kw) -> GlanceAPI:
        return GlanceAPI(self.glance_url, **kw)


@dataclass
class HeadNode:
    """site-b's head node: ssh there, ``. env_file``, then the glance CLI works."""
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    env_file: Path
    staging_dir: Path
    site: str

    def ssh_command(self, *remote: str, known_hosts: Path | None = None) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key_file),
                "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=30",
                f"{self.user}@{self.host}", *remote]

    def run(self, command: str, check: bool = True, timeout: float = 300,
            **kw) -> subprocess.CompletedProcess:
        """Run ``command`` on the head node with its environment loaded."""
        remote = f". {shlex.quote(str(self.env_file))} && {command}"
        return subprocess.run(self.ssh_command(remote), capture_output=True, text=True,
                              check=check, timeout=timeout, **kw)


HEAD_ENV = """\
# environment of the lab's {site} head node: the glance CLI talks to {site}
unset OS_CLOUD OS_AUTH_URL OS_USERNAME OS_PASSWORD OS_PROJECT_NAME OS_AUTH_TYPE
export OS_IMAGE_URL={url}
export OS_AUTH_TOKEN={token}
export OS_IMAGE_API_VERSION=2
export PATH={bin}:"$PATH"
"""


# --------------------------------------------------------------------------- the lab


class Lab:
    """Redis + two Glance sites + site-b's head node (sshd), described by lab.json."""

    def __init__(self, root: Path | str = ".lab", run_dir: Path | str | None = None):
        self.root = Path(root).resolve()
        self.run_dir = Path(run_dir).resolve() if run_dir else self.root / "run"
        self.info_file = self.run_dir / "lab.json"
        self.info: dict = {}
        self.redis: RedisServer | None = None
        self.sshd: Sshd | None = None
        self.glance: dict[str, GlanceSite] = {}
        self.reused = False

    # -- accessors over lab.json
    @property
    def redis_url(self) -> str:
        return self.info["redis_url"]

    @property
    def sites(self) -> dict[str, SiteInfo]:
        return {name: SiteInfo(name=name, glance_url=s["glance_url"],
                               images_dir=Path(s["images_dir"]), log=Path(s["log"]),
                               port=s["port"], dir=Path(s["dir"]), project_id=s["project_id"])
                for name, s in self.info["sites"].items()}

    @property
    def site_a(self) -> SiteInfo:
        return self.sites["site-a"]

    @property
    def site_b(self) -> SiteInfo:
        return self.sites["site-b"]

    @property
    def head_node(self) -> HeadNode:
        h = self.info["head_node"]
        return HeadNode(host=h["host"], port=h["port"], user=h["user"],
                        key_file=Path(h["key_file"]), known_hosts=Path(h["known_hosts"]),
                        env_file=Path(h["env_file"]), staging_dir=Path(h["staging_dir"]),
                        site=h["site"])

    @property
    def pids(self) -> dict[str, int]:
        return self.info["pids"]

    def services(self) -> dict:
        return {"redis": self.redis, **self.glance, "sshd": self.sshd}

    # -- lifecycle
    def start(self, reuse: bool = True) -> Lab:
        """Start everything (or reuse a healthy running lab if ``reuse``)."""
        if reuse and self.attach() and all(self.health().values()):
            self.reused = True
            return self
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        timings = {}
        t0 = time.monotonic()
        venv = ensure_glance_venv(self.root)
        timings["venv_s"] = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        db = ensure_pristine_db(self.root, venv)
        timings["pristine_db_s"] = round(time.monotonic() - t1, 1)
        t2 = time.monotonic()
        self._make_services(venv, db)
        try:
            for service in (*self.glance.values(), self.redis, self.sshd):
                service.spawn()  # all boot in parallel; glance is the slow one
            for service in (self.redis, self.sshd, *self.glance.values()):
                service.wait_ready()
        except BaseException:
            self.stop()
            raise
        timings["services_s"] = round(time.monotonic() - t2, 1)
        self._write_head_env(venv)
        self.info = self._describe(venv, db, timings)
        self.save()
        return self

    def _make_services(self, venv: Path, db: Path, ports: dict | None = None) -> None:
        ports, rd = ports or {}, self.run_dir
        self.redis = RedisServer(rd / "redis", ports.get("redis"))
        self.sshd = Sshd(rd / "sshd", ports.get("sshd"))
        self.glance = {name: GlanceSite(name, rd / name, venv, db, ports.get(name))
                       for name in SITES}

    def _write_head_env(self, venv: Path) -> None:
        site = self.glance[HEAD_SITE]
        (site.dir / "staging").mkdir(exist_ok=True)
        (site.dir / "head-env.sh").write_text(HEAD_ENV.format(
            site=HEAD_SITE, url=shlex.quote(site.glance_url), token=HEAD_TOKEN,
            bin=shlex.quote(str(venv / "bin"))))

    def _describe(self, venv: Path, db: Path, timings: dict) -> dict:
        head = self.glance[HEAD_SITE]
        return {
            "root": str(self.root), "run_dir": str(self.run_dir), "venv": str(venv),
            "pristine_db": str(db), "started_at": time.strftime("%FT%T%z"),
            "redis_url": self.redis.url,
            "redis": {"port": self.redis.port, "dir": str(self.redis.dir),
                      "log": str(self.redis.log)},
            "sites": {name: {"glance_url": s.glance_url, "images_dir": str(s.images_dir),
                             "log": str(s.log), "port": s.port, "dir": str(s.dir),
                             "project_id": s.project_id}
                      for name, s in self.glance.items()},
            "head_node": {"host": HOST, "port": self.sshd.port, "user": getpass.getuser(),
                          "key_file": str(self.sshd.client_key),
                          "known_hosts": str(self.sshd.known_hosts),
                          "env_file": str(head.dir / "head-env.sh"),
                          "staging_dir": str(head.dir / "staging"), "site": HEAD_SITE,
                          "log": str(self.sshd.log)},
            "timings": timings,
        }

    def save(self) -> None:
        """(Re)write lab.json atomically, with the current pids."""
        if self.redis is not None:
            self.info["pids"] = {name: s.pid for name, s in self.services().items()}
            self.info["pid_start_times"] = {name: s.started
                                            for name, s in self.services().items()}
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info, indent=2) + "\n")
        os.replace(tmp, self.info_file)

    def attach(self) -> bool:
        """Load lab.json and adopt its processes; False if there is none."""
        try:
            self.info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return False
        ports = {"redis": self.info["redis"]["port"], "sshd": self.info["head_node"]["port"],
                 **{n: s["port"] for n, s in self.info["sites"].items()}}
        self._make_services(Path(self.info["venv"]), Path(self.info["pristine_db"]), ports)
        starts = self.info.get("pid_start_times", {})
        for name, service in self.services().items():
            service.adopt(self.info["pids"].get(name), starts.get(name))
        return True

    def health(self) -> dict[str, bool]:
        """Per service: is its process ours and does it answer?"""
        if self.redis is None and not self.attach():
            return {}
        return {name: s.running() and s.healthy() for name, s in self.services().items()}

    def restart(self, name: str, timeout: float | None = None) -> None:
        """Restart one service on its port (fault injection), update lab.json."""
        self.services()[name].restart(timeout)
        self.save()

    def stop(self) -> None:
        """Stop what this lab started (and only that); forget lab.json."""
        if self.redis is None:
            self.attach()
        for service in self.services().values():
            if service is not None:
                service.stop()
        self.info_file.unlink(missing_ok=True)
        self.redis, self.sshd, self.glance = None, None, {}

    # -- images
    def upload_image(self, site: str, path: Path | str, name: str, **properties) -> dict:
        return self.sites[site].api().upload_image(path, name, **properties)

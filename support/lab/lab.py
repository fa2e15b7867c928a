#!/usr/bin/env python3
"""The migratio lab: two real Glance sites, site-b's head node (sshd) and Redis.

Usable as a module (``import lab``; stdlib only) and as a script::

    python3 support/lab/lab.py start|stop|status [--root .lab] [--run-dir DIR]
    python3 support/lab/lab.py upload-image --site site-a --name demo [--size 1G --data-mib 64]

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

import argparse
import fcntl
import getpass
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# siblings: importable because this directory is sys.path[0] (script) or on sys.path;
# re-exported so that users need only ``import lab``
from labimages import (  # noqa: F401
    GlanceAPI,
    GlanceError,
    file_hashes,
    make_qcow2,
    parse_size,
    qemu_img_info,
)
from labservices import (  # noqa: F401
    HOST,
    GlanceSite,
    LabError,
    RedisServer,
    Sshd,
    redis_ping,
    run,
    ssh_banner,
    start_time,
    tail,
)

GLANCE_PYTHON = "3.11"
GLANCE_REQUIREMENTS = ("glance==33.0.0", "gunicorn>=23", "python-glanceclient")
SITES = ("site-a", "site-b")
HEAD_SITE = "site-b"
HEAD_TOKEN = "lab-token"


# --------------------------------------------------------------------------- glance venv


@contextmanager
def file_lock(path: Path):
    """An exclusive flock on ``path`` (serialises concurrent lab processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_uv() -> str:
    """``uv`` next to the running Python (e.g. the project venv's) or from PATH."""
    candidates = [str(Path(sys.executable).parent / "uv"), shutil.which("uv")]
    for uv in candidates:
        if uv and os.access(uv, os.X_OK):
            return uv
    raise LabError("uv not found on PATH nor next to " + sys.executable +
                   " (install it: python3 -m pip install uv)")


def venv_spec() -> str:
    """The exact requirement spec of the glance venv (recorded in its marker)."""
    return "\n".join([f"python {GLANCE_PYTHON}", *GLANCE_REQUIREMENTS]) + "\n"


def ensure_glance_venv(lab_root: Path) -> Path:
    """``<lab_root>/glance-venv`` with glance, gunicorn and glanceclient (idempotent)."""
    venv = Path(lab_root).resolve() / "glance-venv"
    marker = venv / ".lab-requirements"
    if marker.exists() and marker.read_text() == venv_spec():
        return venv
    with file_lock(Path(lab_root).resolve() / "glance-venv.lock"):
        if marker.exists() and marker.read_text() == venv_spec():
            return venv
        uv = find_uv()
        run([uv, "venv", "--clear", "--quiet", "--python", GLANCE_PYTHON, str(venv)])
        run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin/python"),
             *GLANCE_REQUIREMENTS])
        marker.write_text(venv_spec())
    return venv


def ensure_pristine_db(lab_root: Path, venv: Path) -> Path:
    """A db_sync'ed glance sqlite under ``<lab_root>/cache`` (made once per venv spec)."""
    cache = Path(lab_root).resolve() / "cache"
    key = hashlib.sha256(venv_spec().encode()).hexdigest()[:12]
    db = cache / f"glance-pristine-{key}.sqlite"
    if db.exists():
        return db
    with file_lock(cache / "pristine-db.lock"):
        if db.exists():
            return db
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            (Path(tmp) / "glance-api.conf").write_text(
                f"[database]\nconnection = sqlite:///{tmp}/glance.sqlite\n")
            run([str(venv / "bin/glance-manage"), "--config-dir", tmp, "db_sync"], cwd=tmp)
            os.replace(Path(tmp) / "glance.sqlite", db)
    return db


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


# --------------------------------------------------------------------------- CLI


def _print_summary(lab: Lab) -> None:
    head = lab.head_node
    how = "reused the running lab" if lab.reused else f"started in {lab.info['timings']}"
    print(f"lab {how} ({lab.info_file})")
    for name, site in lab.sites.items():
        print(f"  {name}: {site.glance_url}  images in {site.images_dir}")
    print(f"  redis: {lab.redis_url}")
    print(f"  head node ({head.site}): ssh -p {head.port} -i {head.key_file} "
          f"-o UserKnownHostsFile={head.known_hosts} {head.user}@{head.host}")
    print(f"    then: . {head.env_file} && glance image-list   (staging: {head.staging_dir})")
    print(f"stop it with: python3 {Path(__file__).resolve()} stop --root {lab.root}"
          + (f" --run-dir {lab.run_dir}" if lab.run_dir != lab.root / "run" else ""))


def _cmd_status(lab: Lab) -> int:
    health = lab.health()
    if not health:
        print(f"lab not running ({lab.info_file} missing)")
        return 1
    for name, ok in health.items():
        print(f"  {name:7} {'running' if ok else 'DOWN'}  pid {lab.pids.get(name)}")
    print("lab running" if all(health.values()) else "lab degraded")
    return 0 if all(health.values()) else 1


def _cmd_upload(lab: Lab, args) -> int:
    if not lab.attach():
        raise LabError(f"no lab running ({lab.info_file} missing): run start first")
    props = dict(p.split("=", 1) for p in args.property)
    path = Path(args.file) if args.file else make_qcow2(
        lab.run_dir / f"{args.name}.qcow2", args.size, args.data_mib,
        seed=zlib.crc32(args.name.encode()))
    image = lab.upload_image(args.site, path, args.name, **props)
    print(image["id"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "upload-image"])
    parser.add_argument("--root", default=".lab", help="lab root (default: .lab)")
    parser.add_argument("--run-dir", help="run dir (default: ROOT/run)")
    parser.add_argument("--fresh", action="store_true", help="start: never reuse")
    up = parser.add_argument_group("upload-image")
    up.add_argument("--site", default="site-a", choices=SITES)
    up.add_argument("--name", default="lab-image")
    up.add_argument("--file", help="upload this file instead of making a qcow2")
    up.add_argument("--size", default="1G", help="virtual size of the made qcow2")
    up.add_argument("--data-mib", type=int, default=16, help="MiB of data in it")
    up.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    lab = Lab(args.root, args.run_dir)
    try:
        if args.command == "start":
            _print_summary(lab.start(reuse=not args.fresh))
        elif args.command == "stop":
            lab.stop()
            print(f"lab stopped ({lab.run_dir})")
        elif args.command == "status":
            return _cmd_status(lab)
        else:
            return _cmd_upload(lab, args)
    except BrokenPipeError:  # output piped into `head`
        return 0
    except (LabError, GlanceError, OSError, subprocess.CalledProcessError) as e:
        first, _, details = str(e).partition("\n")
        print(f"lab {args.command} failed: {first}", file=sys.stderr)
        if details:
            print(details, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

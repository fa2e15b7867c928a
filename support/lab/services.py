"""Lab services: a private Redis, a private sshd and a Glance API site.

Stdlib only. Every service runs as the leader of its own session
(``start_new_session``) with its output in its own log file. A service is
identified by (pid, start time), both recorded in lab.json, so that a later
``stop`` from another process signals only processes the lab started, even if
a pid was reused since.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
# on the PYTHONPATH of the Glance venv's gunicorn, which loads support.lab.wsgi and support.lab.auth
REPO = Path(__file__).resolve().parents[2]


class LabError(RuntimeError):
    """A lab service could not be prepared, started or stopped."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, raise LabError with its output if it fails."""
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                       f"{proc.stdout}{proc.stderr}")
    return proc


def proc_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int | None) -> int | None:
    """Start time of a live (non-zombie) process, in clock ticks since boot.

    (pid, start time) identifies a process even if its pid is reused later.
    """
    fields = proc_stat(pid) if pid else None
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a service and the children it made)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields and fields[0] != b"Z" and int(fields[3]) == sid:
                members.append(int(entry))
    return members


def terminate(pid: int, popen: subprocess.Popen | None = None, grace: float = 5.0) -> None:
    """Stop the session led by ``pid``: SIGTERM, SIGKILL after ``grace`` seconds.

    Every service is started as a session leader, so its session holds exactly
    the processes it made (e.g. gunicorn's worker); a session id cannot be
    reused while the session has members, so they are safe to kill even if the
    leader is gone. ``popen`` is given when ``pid`` is our own child.
    """
    def leader_alive() -> bool:
        return popen.poll() is None if popen is not None else start_time(pid) is not None

    def kill(p: int, sig: int) -> None:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass

    members = session_members(pid)
    if leader_alive():
        kill(pid, signal.SIGTERM)  # the leader shuts its children down itself
        deadline = time.monotonic() + grace
        while leader_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    for p in members:
        if start_time(p) is not None:
            kill(p, signal.SIGKILL)
    if popen is not None:
        popen.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(start_time(p) is not None for p in members) and time.monotonic() < deadline:
        time.sleep(0.05)


# --------------------------------------------------------------------------- base class


class Service:
    """One lab process: started in its own session, logged, stoppable by pid.

    Subclasses implement ``command()`` and ``healthy()``, and may override
    ``prepare()`` (writes the configuration before every start) and ``env()``.
    The process runs in ``dir`` and logs to ``log``.
    """

    name = "service"
    start_timeout = 60.0

    def __init__(self, directory: Path, port: int | None = None):
        self.dir = Path(directory)
        self.port = port
        self.pid: int | None = None
        self.started: int | None = None  # start time of pid, see start_time()
        self._popen: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.dir / f"{self.name}.log"

    # -- to override
    def prepare(self) -> None:
        """Write configuration; called by ``spawn`` before every start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- lifecycle
    def running(self) -> bool:
        return self.pid is not None and start_time(self.pid) == self.started

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        self.prepare()
        env = self.env()
        with open(self.log, "ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} starting {self.name} on port "
                      f"{self.port}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.dir, env=env, start_new_session=True)
        self.pid = self._popen.pid
        self.started = start_time(self.pid)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``healthy()`` until it answers; fail with the log tail."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if self._popen is not None and self._popen.poll() is not None:
                self._fail(f"exited with status {self._popen.returncode} while starting")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"did not answer within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _fail(self, what: str):
        raise LabError(f"{self.name} (port {self.port}) {what}; "
                       f"last lines of {self.log}:\n{tail(self.log)}")

    def start(self, timeout: float | None = None) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process and its children (only if it is the one we started)."""
        if self._popen is not None or self.running():
            terminate(self.pid, self._popen, grace)
        self._popen = None
        self.pid = self.started = None

    def restart(self, timeout: float | None = None) -> None:
        """Stop and start again on the same port (for fault injection)."""
        self.stop()
        self.start(timeout)

    def adopt(self, pid: int | None, started: int | None) -> None:
        """Take over a process started earlier (pid and start time from lab.json)."""
        self._popen = None
        self.pid, self.started = pid, started


# --------------------------------------------------------------------------- Redis


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if a Redis server answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(Service):
    """A private redis-server without persistence on a loopback port."""

    name = "redis"
    start_timeout = 30.0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self) -> list[str]:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [exe, "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir), "--daemonize", "no",
                "--logfile", "", *self.options()]

    def options(self) -> list[str]:
        """Persistence and access: no saving, no password."""
        return ["--save", "", "--appendonly", "no", "--protected-mode", "no"]

    def healthy(self) -> bool:
        return redis_ping(HOST, self.port)


# --------------------------------------------------------------------------- sshd


SSHD_CONFIG = """\
# private sshd of the migratio lab: plays site-b's head node
Port {port}
ListenAddress {host}
HostKey {dir}/ssh_host_ed25519_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
LogLevel INFO
"""


def ssh_banner(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if an SSH server on host:port sends its ``SSH-2.0`` banner."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            return s.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


class Sshd(Service):
    """A private sshd (``-D -e``) with its own host key and one client key."""

    name = "sshd"
    start_timeout = 30.0

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    def prepare(self) -> None:
        for key in (self.host_key, self.client_key):
            if not key.exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                     f"migratio-lab-{key.name}", "-f", str(key)])
        shutil.copyfile(self.client_key.with_suffix(".pub"), self.dir / "authorized_keys")
        host_pub = " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[{HOST}]:{self.port} {host_pub}\n")
        self.config.write_text(SSHD_CONFIG.format(port=self.port, host=HOST, dir=self.dir))
        try:  # privilege separation directory; only root needs (and can make) it
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        except PermissionError:
            pass
        run(["/usr/sbin/sshd", "-t", "-f", str(self.config)])

    def command(self) -> list[str]:
        return ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)]

    def healthy(self) -> bool:
        return ssh_banner(HOST, self.port)


# --------------------------------------------------------------------------- Glance


GLANCE_API_CONF = """\
# glance-api.conf of lab site {name}
[DEFAULT]
enabled_backends = local:file
debug = false
use_stderr = true
worker_self_reference_url = http://{host}:{port}

[database]
connection = sqlite:///{dir}/glance.sqlite

[glance_store]
default_backend = local

[local]
filesystem_store_datadir = {dir}/images

[os_glance_staging_store]
filesystem_store_datadir = {dir}/glance-staging

[os_glance_tasks_store]
filesystem_store_datadir = {dir}/glance-tasks

[paste_deploy]
flavor = lab
config_file = {dir}/etc/glance-api-paste.ini

# let web-download import from the other lab site / local HTTP servers
[import_filtering_opts]
allowed_hosts = [{host}]
allowed_ports = []
"""

GUNICORN_CONF = """\
# gunicorn settings of lab site {name} (unknown names are ignored by older gunicorns)
bind = "{host}:{port}"
worker_class = "gthread"
workers = 1
threads = 8
timeout = 900               # app loading is slow on a loaded machine: never kill the booting worker
graceful_timeout = 5        # but stop fast on SIGTERM
accesslog = "-"
proc_name = "glance-{name}"
control_socket_disable = True  # gunicorn >= 27: no shared ~/.gunicorn/gunicorn.ctl
"""

LAB_PIPELINE = """

# --- added by the migratio lab: the unauthenticated pipeline, but with a
# --- project-scoped admin context (support.lab.auth sets keystonemiddleware's headers)
[pipeline:glance-api-lab]
pipeline = cors http_proxy_to_wsgi versionnegotiation osprofiler labauth context rootapp

[filter:labauth]
paste.filter_factory = support.lab.auth:filter_factory
project_id = {project_id}
user_id = {user_id}
"""


def glance_answers(url: str, timeout: float = 5.0) -> bool:
    """True if ``GET <url>/versions`` answers 200 or 300 with a version list."""
    host, _, port = url.split("//", 1)[1].partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/versions")
        resp = conn.getresponse()
        return resp.status in (200, 300) and b"versions" in resp.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class GlanceSite(Service):
    """One Glance API (sqlite + file store) under gunicorn on a loopback port.

    ``pristine_db`` is a db_sync'ed sqlite file that is copied for the site.
    """

    start_timeout = 600.0

    def __init__(self, name: str, directory: Path, venv: Path, pristine_db: Path,
                 port: int | None = None):
        super().__init__(directory, port)
        self.name = name
        self.venv = Path(venv)
        self.pristine_db = Path(pristine_db)

    @property
    def glance_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def images_dir(self) -> Path:
        return self.dir / "images"

    @property
    def config_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def project_id(self) -> str:
        return f"lab-{self.name}-project"

    def prepare(self) -> None:
        for sub in ("images", "glance-staging", "glance-tasks", "etc"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        conf = GLANCE_API_CONF.format(name=self.name, host=HOST, port=self.port, dir=self.dir)
        (self.config_dir / "glance-api.conf").write_text(conf)
        (self.config_dir / "gunicorn.conf.py").write_text(
            GUNICORN_CONF.format(name=self.name, host=HOST, port=self.port))
        paste = (self.venv / "etc/glance/glance-api-paste.ini").read_text()
        paste += LAB_PIPELINE.format(project_id=self.project_id, user_id="lab-admin")
        (self.config_dir / "glance-api-paste.ini").write_text(paste)
        db = self.dir / "glance.sqlite"
        if not db.exists():
            shutil.copyfile(self.pristine_db, db)

    def command(self) -> list[str]:
        return [str(self.venv / "bin/gunicorn"), "-c", str(self.config_dir / "gunicorn.conf.py"),
                "support.lab.wsgi:application"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OS_GLANCE_CONFIG_DIR"] = str(self.config_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.pop("VIRTUAL_ENV", None)
        return env

    def healthy(self) -> bool:
        return glance_answers(self.glance_url)

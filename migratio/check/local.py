"""Probes of this host: config.yml, Redis, the images/work/log dirs, the tools on PATH."""

import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from redis import Redis
from rq import Worker

from migratio.check.probe import Fail, Runner
from migratio.conf.config import Config, load_config
from migratio.queue.enqueue import migration_queue
from migratio.redact import Redactor
from migratio.units import format_size

TOOLS = {"qemu-img": "qemu-utils", "rsync": "rsync", "ssh": "openssh-client"}

ConnectRedis = Callable[[Config, Redactor], Redis]


def run_local(runner: Runner, config: Config, environ: Mapping[str, str], connect: ConnectRedis,
              redact: Redactor) -> None:
    runner.probe("redis", lambda: check_redis(connect, config, redact),
                 "start redis-server or fix 'redis_url' in config.yml")
    runner.probe("images dir", lambda: check_readable_dir(config.images_dir),
                 f"let this user read {config.images_dir} (e.g. add it to group glance), or fix 'images_dir'")
    runner.probe("work dir", lambda: check_writable_dir(config.work_dir),
                 f"create {config.work_dir} owned by this user, or fix 'work_dir'")
    runner.probe("log dir", lambda: check_writable_dir(config.log_dir),
                 f"create {config.log_dir} owned by this user, or fix 'log_dir'")
    path = environ.get("PATH", os.defpath)
    for tool, package in TOOLS.items():
        runner.probe(f"tool {tool}", lambda t=tool: check_tool(t, path),
                     f"apt-get install {package} (or add its directory to PATH of the service)")


def check_config(path: Path) -> tuple[Config, str]:
    config = load_config(path)
    return config, f"{path} is valid (name {config.name}, queue {config.queue_name})"


def check_redis(connect: ConnectRedis, config: Config, redact: Redactor) -> str:
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
        raise Fail(f"{path} is not readable by user {user_name()}")
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
    return found


def user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"

"""`migratio check` lists staged files nothing will use any more (issue 14, item 8): this site's
files in a destination's staging dir, older than `lock_ttl`, whose (image, destination) lock no
job holds. On the lab: its head node's staging dir and its Redis."""

import os
import time
import uuid
from pathlib import Path

import pytest
import redis
import yaml
from click.testing import CliRunner

from migratio.cli import main
from migratio.queue.keys import lock_key
from tests.builders import config_factory, write_site

pytestmark = pytest.mark.lab
HOURS_AGO = time.time() - 2 * 3600


@pytest.fixture
def staging(lab):
    """Makes files in the head node's staging dir (mtime `age` seconds ago); removes them at the end."""
    made: list[Path] = []

    def make(name: str, mtime: float = HOURS_AGO) -> Path:
        path = Path(lab.head_node.staging_dir) / name
        path.write_bytes(b"partial")
        os.utime(path, (mtime, mtime))
        made.append(path)
        return path

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def check_site_b(lab, tmp_path) -> tuple[int, list[str]]:
    head = lab.head_node
    config = config_factory(tmp_path, redis_url=lab.redis_url, images_dir=str(lab.site_a.images_dir), lock_ttl=3600)
    write_site(config.sites_dir, "site-b", yaml.safe_dump({
        "type": "openstack", "host": head.host, "port": head.port, "user": head.user, "key_file": str(head.key_file),
        "known_hosts": str(head.known_hosts), "staging_dir": str(head.staging_dir),
        "remote_env_file": str(head.env_file)}))
    env = {name: None for name in os.environ if name.startswith(("OS_", "AWS_"))}
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "config.yml"), "check", "site-b", "--min-free", "1M"],
                                env={**env, "OS_IMAGE_URL": lab.site_a.glance_url, "OS_AUTH_TOKEN": "lab-token"})
    return result.exit_code, result.output.splitlines()


def test_stale_staged_files_of_this_site_are_listed(lab, tmp_path, staging):
    stale = staging(f"{uuid.uuid4()}-site-a.qcow2")
    held_image = str(uuid.uuid4())
    staging(f"{held_image}-site-a.raw")  # a running job holds its lock
    staging(f"{uuid.uuid4()}-site-a.qcow2", mtime=time.time())  # being written
    staging(f"{uuid.uuid4()}-site-z.qcow2")  # another source site's: its own check judges it
    staging(".migratio-glance-0123456789ab.py")  # the head-node client
    lock = redis.Redis.from_url(lab.redis_url)
    lock.set(lock_key("atmosphere", held_image, "site-b"), "a live job", ex=600)
    try:
        code, lines = check_site_b(lab, tmp_path)
    finally:
        lock.delete(lock_key("atmosphere", held_image, "site-b"))
    staging_line = next(ln for ln in lines if "site-b: staging dir" in ln)
    assert code == 1, "\n".join(lines)
    assert staging_line == (
        f"FAIL  site-b: staging dir: {lab.head_node.staging_dir} holds 1 staged file older than lock_ttl (3600 s) "
        f"that no job holds: {stale.name} -- fix: remove it on {lab.head_node.host}: "
        f"rm -f -- {stale}")


def test_no_stale_staged_file_passes(lab, tmp_path, staging):
    staging(f"{uuid.uuid4()}-site-a.qcow2", mtime=time.time())
    code, lines = check_site_b(lab, tmp_path)
    staging_line = next(ln for ln in lines if "site-b: staging dir" in ln)
    assert code == 0, "\n".join(lines)
    assert staging_line.startswith(f"PASS  site-b: staging dir: {lab.head_node.staging_dir} is writable (")

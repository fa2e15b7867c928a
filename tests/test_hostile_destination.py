"""Issue 14, "Destination", end to end on the lab (one job at a time, in this process):

- dedupe counts only images owned by the project migratio registers into: site-b's Glance runs
  every request as its own project, except requests with an `X-Lab-Project` header
  (support/lab/auth.py), which make images owned by another project; the lab's admin
  credentials still see them, as an admin or a public/shared image would be seen;
- a source image's property names never choose which image is uploaded to (glance CLI tables);
- a failed attempt leaves nothing behind: no queued image, no staged file.
"""

import errno
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
import yaml

from migratio.conf.sites import load_site
from migratio.errors import MigratioError, PermanentError
from migratio.openstack import headnode_client, stream
from migratio.openstack.destination import open_destination
from migratio.openstack.glance_protocol import OWNER_PROBE
from migratio.pipeline.services import default_services
from migratio.pipeline.status import DictMeta
from migratio.queue.migration import run_migration
from migratio.queue.worker import build_app
from support.lab.images import make_qcow2
from tests.builders import config_factory, write_site
from tests.fixtures.lab import staged

FOREIGN = "other-project"
PATHS = {
    "headnode-client": {},
    "glance-cli": {"remote_python": ""},
    "api": {"register": {"via": "api", "cloud": "site-b"}},
}


class Run(NamedTuple):
    result: dict | None
    error: Exception | None
    meta: DictMeta


def head_conf(lab, **overrides) -> dict:
    head = lab.head_node
    conf = {"type": "openstack", "host": head.host, "port": head.port, "user": head.user,
            "key_file": str(head.key_file), "known_hosts": str(head.known_hosts),
            "staging_dir": str(head.staging_dir), "remote_env_file": str(head.env_file), "connect_timeout": 10}
    return {**conf, **overrides}


@pytest.fixture
def migrate(lab, redis_server, tmp_path, clean_lab_images):
    """migrate(image_id, **site_conf_overrides) -> Run: one job, in this process, on the lab."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {
        name: {"auth_type": "admin_token", "auth": {"endpoint": site.glance_url, "token": "lab-token"}}
        for name, site in lab.sites.items()}}))
    runs = itertools.count()

    def run(image_id: str, retries: int = 0, retries_left: int = 0, **site) -> Run:
        """With retries_left < retries, this run is a retry of an attempt that failed."""
        root = tmp_path / f"run{next(runs)}"
        root.mkdir()
        config = config_factory(root, redis_url=redis_server.url, cloud="site-a", clouds_file=str(clouds),
                                images_dir=str(lab.site_a.images_dir), work_dir=str(root / "work"), retries=retries)
        write_site(config.sites_dir, "site-b", yaml.safe_dump(head_conf(lab, **site)))
        app = build_app(config, redis.Redis.from_url(redis_server.url), feedback=False)
        meta, job_id = DictMeta(), f"job-{uuid.uuid4().hex[:8]}"
        try:
            return Run(run_migration(app, job_id, image_id, "site-b", meta, retries_left=retries_left), None, meta)
        except Exception as exc:  # noqa: BLE001 (a test looks at it)
            return Run(None, exc, meta)

    return run


def foreign_image(lab, data_path=None, **properties) -> dict:
    """An image on site-b owned by another project (active with `data_path`'s bytes, else queued)."""
    api = lab.site_b.api()
    as_other = {"X-Lab-Project": FOREIGN}
    image = api.json("POST", "/v2/images", {"name": "not ours", "disk_format": "qcow2", "container_format": "bare",
                                           "visibility": "public", **properties}, headers=as_other)
    assert image["owner"] == FOREIGN
    if data_path is not None:
        api.request("PUT", f"/v2/images/{image['id']}/file", data_path.read_bytes(),
                    headers={**as_other, "Content-Type": "application/octet-stream"})
        image = api.wait_status(image["id"], "active")
    return image


@pytest.mark.lab
@pytest.mark.parametrize("path", PATHS)
def test_a_foreign_copy_is_neither_already_present_nor_deleted(lab, glance_image, migrate, tmp_path, path):
    img = glance_image()
    origin = {"source_t": "site-a", "source_uuid": img.id, "source_cs": "site-a"}
    other_bytes = make_qcow2(tmp_path / "other.qcow2", "64M", 2, seed=7)
    right = foreign_image(lab, img.path, **origin)  # the very bytes of the source
    wrong = foreign_image(lab, other_bytes, **origin)  # would be "a wrong copy" if it were ours
    queued = foreign_image(lab, **origin)  # would be "a leftover of a crashed run" if it were ours

    out = migrate(img.id, **PATHS[path])

    assert out.error is None, out.error
    dest_id = out.result["dest_image_id"]
    assert out.result["already_present"] is False
    assert dest_id not in (right["id"], wrong["id"], queued["id"])
    api = lab.site_b.api()
    kept = {i: (api.get_image(i) or {}).get("status") for i in (right["id"], wrong["id"], queued["id"])}
    assert kept == {right["id"]: "active", wrong["id"]: "active", queued["id"]: "queued"}
    dest = api.get_image(dest_id)
    assert (dest["status"], dest["owner"], dest["os_hash_value"]) == ("active", lab.site_b.project_id,
                                                                        img.os_hash_value)


@pytest.mark.lab
@pytest.mark.parametrize("path", PATHS)
def test_our_own_copy_is_still_already_present_beside_a_foreign_one(lab, glance_image, migrate, path):
    img = glance_image()
    origin = {"source_t": "site-a", "source_uuid": img.id, "source_cs": "site-a"}
    foreign_image(lab, img.path, **origin)
    ours = lab.site_b.api().upload_image(img.path, "ours", **origin)

    out = migrate(img.id, **PATHS[path])

    assert out.error is None, out.error
    assert out.result == {"dest_image_id": ours["id"], "already_present": True}


@pytest.mark.lab
@pytest.mark.parametrize("path", PATHS)
def test_each_destination_names_the_project_it_registers_into_and_leaves_no_probe_image(lab, path, tmp_path):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"site-b": {
        "auth_type": "admin_token", "auth": {"endpoint": lab.site_b.glance_url, "token": "lab-token"}}}}))
    options = load_site(write_site(tmp_path / "sites", "site-b", yaml.safe_dump(head_conf(lab, **PATHS[path]))).parent,
                        "site-b").openstack
    services = default_services(config_factory(tmp_path, clouds_file=str(clouds)), environ={})
    with open_destination(options, "site-b", services.glance, services.remote) as dest:
        assert dest.project() == lab.site_b.project_id
    assert lab.site_b.api().list_images(name=OWNER_PROBE) == []


# --------------------------------------------------------------------------- property names (item 5)

TABLE_PATHS = {"glance-cli-stream": {"remote_python": ""}, "glance-cli-rsync": {"remote_python": "", "stream": False},
               "headnode-client": {}}


@pytest.mark.lab
@pytest.mark.parametrize("path", TABLE_PATHS)
def test_a_property_named_like_a_field_never_picks_the_image_uploaded_to(lab, glance_image, migrate, path):
    api = lab.site_b.api()
    victim = api.create_image("another image, still empty", source_uuid=str(uuid.uuid4()))
    img = glance_image(properties={" id": victim["id"], "id ": victim["id"], "status ": "active"})

    out = migrate(img.id, **TABLE_PATHS[path])

    assert isinstance(out.error, PermanentError), out.error
    assert str(out.error) == (f"image {img.id} has a property named ' id': a glance table would show it as "
                              "another name (spaces around it, a line break or '|'); refused, rename it on site-a")
    assert out.meta.data["steps_done"] == ["locate"]  # refused by dedupe: nothing was sent
    assert (api.get_image(victim["id"]) or {}).get("status") == "queued"  # untouched
    assert api.list_images(source_uuid=img.id) == []
    assert staged(lab, img.id) == []


# --------------------------------------------------------------------------- what an attempt leaves (item 8)


@pytest.mark.lab
@pytest.mark.parametrize("path", ["headnode-client", "glance-cli"])
def test_a_feed_that_fails_after_the_image_was_created_leaves_no_image_and_no_staged_file(
        lab, glance_image, migrate, monkeypatch, path):
    img = glance_image()
    api = lab.site_b.api()

    def feeder(payload, rate, progress, clock=None, **_codec):
        def feed(pipe):  # half the bytes, then (once the head node created the image) a read error
            data = payload.read_bytes()
            pipe.write(data[: len(data) // 2])
            pipe.flush()
            deadline = time.monotonic() + 60
            while not api.list_images(source_uuid=img.id) and time.monotonic() < deadline:
                time.sleep(0.2)
            raise OSError(errno.EIO, "Input/output error")
        return feed

    monkeypatch.setattr(stream, "feeder", feeder)
    out = migrate(img.id, **PATHS[path])

    assert isinstance(out.error, MigratioError) and out.error.retryable, repr(out.error)
    assert str(out.error).endswith("to stream it to site-b failed: Input/output error")
    assert api.list_images(source_uuid=img.id) == []
    assert staged(lab, img.id) == []


def deactivated_copy(lab, img) -> dict:
    api = lab.site_b.api()
    copy = api.upload_image(img.path, "ours", source_t="site-a", source_uuid=img.id, source_cs="site-a")
    api.request("POST", f"/v2/images/{copy['id']}/actions/deactivate")
    return copy


@pytest.mark.lab
def test_the_last_attempt_removes_a_staged_partial_copy_even_when_it_fails_before_transfer(lab, glance_image, migrate):
    img = glance_image()
    partial = Path(lab.head_node.staging_dir) / f"{img.id}-site-a.qcow2"
    partial.write_bytes(img.path.read_bytes()[:65536])  # what the first attempt left for its retry
    copy = deactivated_copy(lab, img)  # dedupe refuses to go on

    out = migrate(img.id, retries=1, retries_left=0)

    assert isinstance(out.error, PermanentError) and f"image {copy['id']} on site-b" in str(out.error)
    assert staged(lab, img.id) == []


@pytest.mark.lab
def test_a_staged_partial_copy_is_kept_while_a_retry_will_come_and_removed_by_the_last(lab, glance_image, migrate,
                                                                                         tmp_path):
    img = glance_image()
    partial = Path(lab.head_node.staging_dir) / f"{img.id}-site-a.qcow2"
    partial.write_bytes(img.path.read_bytes()[:65536])
    glance_down = tmp_path / "openrc.sh"  # the head node is this machine: it sources this file
    glance_down.write_text("echo 'HTTP 503 Service Unavailable' >&2\nreturn 1\n")

    retried = migrate(img.id, retries=2, retries_left=1, remote_env_file=str(glance_down))
    assert retried.error.retryable and staged(lab, img.id) == [partial.name]
    last = migrate(img.id, retries=2, retries_left=0, remote_env_file=str(glance_down))
    assert last.error.retryable and staged(lab, img.id) == []


@pytest.mark.lab
def test_a_retry_that_finds_the_copy_removes_the_partial_copy_an_earlier_attempt_staged(lab, glance_image, migrate):
    img = glance_image()
    partial = Path(lab.head_node.staging_dir) / f"{img.id}-site-a.qcow2"
    partial.write_bytes(img.path.read_bytes()[:65536])
    copy = lab.site_b.api().upload_image(img.path, "ours", source_t="site-a", source_uuid=img.id, source_cs="site-a")

    out = migrate(img.id, retries=1, retries_left=0)

    assert out.result == {"dest_image_id": copy["id"], "already_present": True}
    assert staged(lab, img.id) == []


# --------------------------------------------------------------------------- Keystone: no probe image


class Keystone:
    """Keystone v3 in its documented response shape: a token scoped to project p-1, with a catalog
    whose image endpoint is this same server (which refuses everything else); records every request."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                double.requests.append(("POST", self.path))
                if self.path == "/v3/auth/tokens":
                    catalog = [{"type": "image", "endpoints": [
                        {"interface": "public", "region_id": "r1", "url": double.url}]}]
                    body = {"token": {"project": {"id": "p-1", "name": "proj"}, "catalog": catalog}}
                    return self.answer(201, body, {"X-Subject-Token": "tok-1"})
                return self.answer(403, {"message": "no images are made here"})

            def do_GET(self):
                double.requests.append(("GET", self.path))
                return self.answer(403, {"message": "nothing is listed here"})

            def answer(self, code, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(code)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_head_node_client_names_the_keystone_tokens_project_without_making_an_image():
    double = Keystone()
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OS_AUTH_URL": double.url + "/v3",
               "OS_USERNAME": "u", "OS_PASSWORD": "pw", "OS_PROJECT_NAME": "proj"}
        proc = subprocess.run([sys.executable, headnode_client.__file__, "project"],
                              env=env, capture_output=True, timeout=60)
    finally:
        double.close()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"project": "p-1"}
    assert double.requests == [("POST", "/v3/auth/tokens")]  # no image made, nothing listed

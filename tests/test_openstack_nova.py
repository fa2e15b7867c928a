"""The Nova client and the boot-check step, against a small HTTP double of Nova's API.

No real Nova runs in the lab; the double answers in Nova's documented response shapes:
POST /servers -> 202 {"server": {"id"}}, GET /servers/ID -> {"server": {"status", "fault"}},
DELETE /servers/ID -> 204.
"""

import uuid

import pytest

from migratio.conf.sites import BootCheck as BootCheckConf
from migratio.conf.sites import OpenStackOptions, RegisterOptions, Site
from migratio.errors import PermanentError, TransientError
from migratio.openstack import auth
from migratio.openstack import nova as nova_mod
from migratio.steps.openstack import BootCheck
from tests.builders import given_services, make_context
from tests.http_double import HttpDouble, free_port


class FakeNova:
    """Server states in memory; statuses to go through per server."""

    def __init__(self, statuses=("BUILD", "ACTIVE"), fault=None, create_status=202):
        self.statuses, self.fault, self.create_status = list(statuses), fault, create_status
        self.servers: dict[str, list[str]] = {}
        self.deleted: list[str] = []

    def route(self, req):
        parts = req.path.split("?")[0].strip("/").split("/")
        if parts[-1] == "servers" and req.method == "POST":
            if self.create_status != 202:
                return self.create_status, {"badRequest": {"code": self.create_status, "message": "bad flavor"}}
            server_id = str(uuid.uuid4())
            self.servers[server_id] = list(self.statuses)
            return 202, {"server": {"id": server_id, "links": [], "adminPass": "x",
                                    "OS-DCF:diskConfig": "AUTO", "security_groups": [{"name": "default"}]}}
        if parts[-2] == "servers" and parts[-1] in self.servers:
            server_id = parts[-1]
            if req.method == "DELETE":
                self.deleted.append(server_id)
                return 204, None
            states = self.servers[server_id]
            status = states.pop(0) if len(states) > 1 else states[0]
            server = {"id": server_id, "status": status, "name": "check"}
            if status == "ERROR" and self.fault:
                server["fault"] = {"code": 500, "message": self.fault, "created": "2026-01-01T00:00:00Z"}
            return 200, {"server": server}
        return 404, {"itemNotFound": {"code": 404, "message": "not found"}}


@pytest.fixture
def nova_api():
    doubles = []

    def start(**kw):
        fake = FakeNova(**kw)
        double = HttpDouble(fake.route)
        doubles.append(double)
        return fake, double

    yield start
    for d in doubles:
        d.close()


def client(url: str) -> nova_mod.Nova:
    session = auth.session(None, None, {"OS_IMAGE_URL": url + "/v2.1", "OS_AUTH_TOKEN": "t"})
    return nova_mod.Nova(session, "site-b", sleep=lambda s: None)


def test_boot_wait_delete(nova_api):
    fake, double = nova_api(statuses=("BUILD", "BUILD", "ACTIVE"))
    nova = client(double.url)
    image_id = str(uuid.uuid4())
    server_id = nova.boot("check", image_id, "m1.small", network="net-1")
    assert nova.wait(server_id, timeout=60) == ("ACTIVE", None)
    assert nova.delete(server_id) is True
    create = next(r for r in double.requests if r.method == "POST")
    body = create.json()["server"]
    assert (body["imageRef"], body["flavorRef"], body["networks"]) == (image_id, "m1.small", [{"uuid": "net-1"}])
    assert create.headers["X-Auth-Token"] == "t"
    assert fake.deleted == [server_id]


def test_error_status_returns_the_fault(nova_api):
    _, double = nova_api(statuses=("BUILD", "ERROR"), fault="No valid host was found.")
    nova = client(double.url)
    server_id = nova.boot("check", str(uuid.uuid4()), "m1.small")
    assert nova.wait(server_id, timeout=60) == ("ERROR", "No valid host was found.")


def test_wait_gives_up_after_the_timeout(nova_api):
    _, double = nova_api(statuses=("BUILD",))
    ticks = iter(range(0, 10000, 100))
    nova = nova_mod.Nova(auth.session(None, None, {"OS_IMAGE_URL": double.url, "OS_AUTH_TOKEN": "t"}),
                         "site-b", sleep=lambda s: None, clock=lambda: next(ticks))
    server_id = nova.boot("check", str(uuid.uuid4()), "m1")
    with pytest.raises(PermanentError, match=f"server {server_id} still BUILD after 300s"):
        nova.wait(server_id, timeout=300)


def test_api_errors_are_translated(nova_api):
    _, double = nova_api(create_status=400)
    with pytest.raises(PermanentError, match="HTTP 400"):
        client(double.url).boot("check", str(uuid.uuid4()), "nope")
    with pytest.raises(TransientError, match="cannot reach Nova"):
        client(f"http://127.0.0.1:{free_port()}").boot("check", str(uuid.uuid4()), "m1")


class FakeDest:
    def __init__(self):
        self.deleted = []

    def delete(self, image_id):
        self.deleted.append(image_id)
        return True

    def close(self):
        pass


def boot_ctx(tmp_path, url, check: BootCheckConf):
    options = OpenStackOptions(host="h", user="u", boot_check=check, register=RegisterOptions(via="api", cloud="b"))
    site = Site("site-b", "openstack", tmp_path / "site-b.conf", options)
    dest = FakeDest()
    ctx = make_context(tmp_path, site, services=given_services(glance=lambda cloud: dest,
                                                               nova=lambda cloud: client(url)))
    ctx.dest_image_id = str(uuid.uuid4())
    return ctx, dest


def test_boot_check_step_passes_and_deletes_the_server(tmp_path, nova_api):
    fake, double = nova_api()
    ctx, dest = boot_ctx(tmp_path, double.url, BootCheckConf(flavor="m1.small", network="n1"))
    line = BootCheck().run(ctx)
    assert line.startswith("Boot check passed") and len(fake.deleted) == 1
    assert dest.deleted == []


def test_boot_check_failure_names_the_fault_and_deletes_the_image_if_asked(tmp_path, nova_api):
    fake, double = nova_api(statuses=("ERROR",), fault="Image is not bootable")
    ctx, dest = boot_ctx(tmp_path, double.url, BootCheckConf(flavor="m1", delete_image_on_failure=True))
    image_id = ctx.result["dest_image_id"]
    with pytest.raises(PermanentError, match=f"server from image {image_id} went to ERROR: Image is not bootable; "
                                             "the image was deleted"):
        BootCheck().run(ctx)
    assert len(fake.deleted) == 1 and dest.deleted == [image_id]


def test_boot_check_failure_keeps_the_image_by_default(tmp_path, nova_api):
    _, double = nova_api(statuses=("ERROR",), fault="boom")
    ctx, dest = boot_ctx(tmp_path, double.url, BootCheckConf(flavor="m1"))
    with pytest.raises(PermanentError, match="ERROR: boom$"):
        BootCheck().run(ctx)
    assert dest.deleted == []

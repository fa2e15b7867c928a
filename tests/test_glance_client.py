"""migratio.openstack.glance.GlanceClient: against the lab's real Glance, and error mapping against a small double."""

import uuid

import pytest

from migratio.errors import AuthError, ImageNotFound, PermanentError, TransientError
from migratio.openstack import auth, glance
from tests.http_double import HttpDouble, free_port


def client(url: str, site: str | None = None) -> glance.GlanceClient:
    session = auth.session(None, None, {"OS_IMAGE_URL": url, "OS_AUTH_TOKEN": "lab-token"})
    return glance.GlanceClient(session, site=site)


def test_user_properties_skip_glance_fields():
    image = {"id": "x", "name": "n", "status": "active", "os_glance_import_task": "t", "stores": "local",
             "os_distro": "ubuntu", "hw_disk_bus": "scsi", "os_hidden": False, "min_ram": 0}
    assert glance.user_properties(image) == {"os_distro": "ubuntu", "hw_disk_bus": "scsi"}


@pytest.mark.lab
def test_get_find_download_against_real_glance(lab, glance_image, tmp_path):
    img = glance_image(properties={"os_distro": "debian", "migratio_case": "client"})
    g = client(lab.site_a.glance_url, "site-a")
    source = g.get(img.id)
    assert (source.id, source.disk_format, source.size, source.checksum) == (img.id, "qcow2", img.size, img.checksum)
    assert (source.os_hash_algo, source.os_hash_value) == ("sha512", img.os_hash_value)
    assert source.properties == {"os_distro": "debian", "migratio_case": "client"}
    assert [i["id"] for i in g.find({"migratio_case": "client", "os_distro": "debian"})] == [img.id]
    assert g.find({"migratio_case": "nothing-has-this"}) == []
    seen = []
    dest = tmp_path / "dl"
    assert g.download(img.id, dest, progress=lambda done, total: seen.append((done, total))) == img.size
    assert dest.read_bytes() == img.path.read_bytes()
    assert seen[-1] == (img.size, img.size)


@pytest.mark.lab
def test_create_upload_delete_against_real_glance(lab, glance_image, clean_lab_images):
    img = glance_image()
    g = client(lab.site_b.glance_url, "site-b")
    new_id = g.create('name "; rm -rf /', "qcow2", "bare", {"source_uuid": img.id, "k": "v"}, min_disk=1)
    assert g.status(new_id) == "queued"
    g.upload(new_id, img.path)
    shown = g.show(new_id)
    assert (shown["status"], shown["checksum"], shown["name"]) == ("active", img.checksum, 'name "; rm -rf /')
    assert (shown["k"], shown["min_disk"]) == ("v", 1)
    assert g.delete(new_id) is True
    assert g.delete(new_id) is False


@pytest.mark.lab
def test_missing_and_inactive_images(lab):
    g = client(lab.site_a.glance_url, "site-a")
    missing = str(uuid.uuid4())
    with pytest.raises(ImageNotFound, match=f"^image {missing} not found on site-a$"):
        g.get(missing)
    queued = g.create("empty", "qcow2", "bare", {})
    try:
        with pytest.raises(PermanentError, match=f"image {queued} on site-a is queued, not active"):
            g.get(queued)
    finally:
        g.delete(queued)


@pytest.mark.parametrize("status, kind, text", [
    (401, AuthError, "authentication failed"),
    (403, AuthError, "permission denied"),
    (404, ImageNotFound, "not found on site-x"),
    (500, TransientError, "HTTP 500"),
    (503, TransientError, "HTTP 503"),
    (400, PermanentError, "HTTP 400"),
])
def test_http_errors_are_translated(status, kind, text):
    double = HttpDouble(lambda req: (status, {"error": {"message": "nope", "code": status}}))
    try:
        with pytest.raises(kind, match=text) as info:
            client(double.url, "site-x").get(str(uuid.uuid4()))
        assert info.value.retryable == (kind is TransientError)
    finally:
        double.close()


def test_connection_refused_is_transient():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransientError, match="cannot reach Glance"):
        client(url, "site-x").find({"source_uuid": "x"})

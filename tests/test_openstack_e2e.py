"""End to end on the lab: a real RQ worker migrates real images from Glance site-a to site-b.

Real components only: Redis, two Glance APIs, site-b's head node (sshd + glance CLI), rsync
and qemu-img. The worker runs in this process in burst mode (it forks a work-horse per job).
"""

import hashlib
import subprocess
import uuid
from pathlib import Path

import pytest

from migratio.queue.job import migrate
from migratio.units import MiB
from tests.builders import STALE_ORIGIN, origin_of
from tests.fixtures.burst import Outcome
from tests.http_double import free_port
from tests.openstack_lab import impostor_known_hosts, rename, tamper

pytestmark = pytest.mark.lab


def copies_on_b(lab, image_id: str) -> list[dict]:
    return lab.site_b.api().list_images(source_uuid=image_id)


def staged_files(lab) -> list[str]:
    return sorted(p.name for p in Path(lab.head_node.staging_dir).iterdir())


def assert_no_temp_files(outcome: Outcome, lab):
    assert not (outcome.config.work_dir / outcome.job.id).exists(), "job work dir left behind"
    image_id = outcome.job.args[0]  # staged names are <image>-<source site>.<format>
    assert not [n for n in staged_files(lab) if image_id in n], "staged file left on the head node"


def sha512(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


HOSTILE_NAME = 'ubuntu "; rm -rf / #$(touch /tmp/migratio-pwned)\n| x | active |'


@pytest.mark.parametrize("remote_python", ["python3", ""], ids=["headnode-client", "glance-cli"])
def test_qcow2_to_qcow2_with_a_hostile_name(lab, glance_image, migrate_on_lab, remote_python):
    img = glance_image(properties={"os_distro": "ubuntu", "hw_disk_bus": "scsi"})
    rename(lab.site_a.api(), img.id, HOSTILE_NAME)  # (the fixture makes a file named after the image)
    out = migrate_on_lab(img.id, remote_python=remote_python)
    assert out.status == "finished", out.meta.get("error")
    dest_id = out.result["dest_image_id"]
    assert out.result["already_present"] is False
    dest = lab.site_b.api().get_image(dest_id)
    assert dest["status"] == "active"
    assert dest["name"] == HOSTILE_NAME  # verbatim, and nothing ran
    assert not Path("/tmp/migratio-pwned").exists()
    assert (dest["disk_format"], dest["container_format"]) == ("qcow2", "bare")
    assert (dest["source_uuid"], dest["source_cs"]) == (img.id, "site-a")
    assert origin_of(dest) == ("site-a", img.id, "site-a")  # source_t + source_uuid: what Atmosphere links by
    assert (dest["os_distro"], dest["hw_disk_bus"]) == ("ubuntu", "scsi")
    assert (dest["size"], dest["checksum"], dest["os_hash_value"]) == (img.size, img.checksum, img.os_hash_value)
    assert [c["id"] for c in copies_on_b(lab, img.id)] == [dest_id]
    assert out.meta["state"] == "finished"
    assert out.meta["steps_done"] == ["locate", "dedupe", "inspect", "convert", "transfer", "register",
                                      "verify", "cleanup"]
    assert any(line.startswith("Image located") for line in out.lines)
    assert any(line.startswith("Image transferred (") for line in out.lines)
    assert f"Image registered as {dest_id}" in out.lines
    assert any(line.startswith("Image verified (") and img.os_hash_value in line for line in out.lines)
    assert out.lines[-1] == f"Migration finished: image {dest_id} on site-b verified"
    assert_no_temp_files(out, lab)


def test_qcow2_to_raw_downloaded_from_the_api(lab, glance_image, migrate_on_lab, tmp_path):
    img = glance_image(virtual_size="32M", data_mib=3)
    empty_store = tmp_path / "no-store-here"
    empty_store.mkdir()
    out = migrate_on_lab(img.id, images_dir=empty_store, disk_format="raw", compress=True, bandwidth_limit=500000)
    assert out.status == "finished", out.meta.get("error")
    dest = lab.site_b.api().get_image(out.result["dest_image_id"])
    raw = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(img.path), str(raw)], check=True)
    assert (dest["status"], dest["disk_format"], dest["size"]) == ("active", "raw", 32 * MiB)
    assert dest["os_hash_value"] == sha512(raw)
    assert dest["source_uuid"] == img.id
    assert origin_of(dest) == ("site-a", img.id, "site-a")
    assert any(line.startswith("Image downloaded from Glance") for line in out.lines)
    assert any(line.startswith("Image converted to raw") for line in out.lines)
    assert_no_temp_files(out, lab)


def test_register_via_api_sends_no_bytes_over_ssh(lab, glance_image, migrate_on_lab):
    img = glance_image()
    out = migrate_on_lab(img.id, register={"via": "api", "cloud": "site-b"}, port=free_port())  # ssh unusable
    assert out.status == "finished", out.meta.get("error")
    dest = lab.site_b.api().get_image(out.result["dest_image_id"])
    assert (dest["status"], dest["os_hash_value"], dest["source_cs"]) == ("active", img.os_hash_value, "site-a")
    assert origin_of(dest) == ("site-a", img.id, "site-a")
    assert not any(line.startswith("Image transferred") for line in out.lines)


def test_already_present_moves_no_bytes(lab, glance_image, migrate_on_lab):
    img = glance_image()
    first = migrate_on_lab(img.id)
    assert first.status == "finished", first.meta.get("error")
    second = migrate_on_lab(img.id)
    assert second.status == "finished", second.meta.get("error")
    assert second.result == {"dest_image_id": first.result["dest_image_id"], "already_present": True}
    assert second.meta["steps_done"] == ["locate", "dedupe", "cleanup"]
    assert second.meta.get("bytes_done") is None
    assert len(copies_on_b(lab, img.id)) == 1
    assert second.lines[-1] == f"Image already present on site-b as {first.result['dest_image_id']}"


@pytest.mark.parametrize("overrides", [
    {},  # streamed into Glance by the head-node client
    {"stream": False, "remote_python": ""},  # rsync, then glance image-create --file
    {"disk_format": "raw", "stream": False},  # converted, rsync
    {"register": {"via": "api", "cloud": "site-b"}},
], ids=["stream", "rsync-glance-cli", "converted-rsync", "via-api"])
def test_a_migrated_source_does_not_pass_its_origin_on(lab, glance_image, migrate_on_lab, overrides):
    img = glance_image(properties={**STALE_ORIGIN, "os_distro": "debian"})  # site-a's image is a copy itself
    assert origin_of(lab.site_a.api().get_image(img.id)) == tuple(STALE_ORIGIN.values())
    out = migrate_on_lab(img.id, **overrides)
    assert out.status == "finished", out.meta.get("error")
    dest = lab.site_b.api().get_image(out.result["dest_image_id"])
    assert origin_of(dest) == ("site-a", img.id, "site-a")
    assert (dest["status"], dest["os_distro"]) == ("active", "debian")
    assert [c["id"] for c in copies_on_b(lab, img.id)] == [dest["id"]]
    assert lab.site_b.api().list_images(source_uuid=STALE_ORIGIN["source_uuid"]) == []


@pytest.mark.parametrize("remote_python", ["python3", ""], ids=["headnode-client", "glance-cli"])
@pytest.mark.parametrize("origin", [
    {"source_cs": "site-a"},  # made by an older migratio or the old tool
    {"source_t": "site-a"},
], ids=["source_cs-only", "source_t-only"])
def test_a_copy_with_either_site_key_is_already_present(lab, glance_image, migrate_on_lab, remote_python, origin):
    img = glance_image()
    api = lab.site_b.api()
    copy = api.upload_image(img.path, "copy", source_uuid=img.id, **origin)
    elsewhere = api.upload_image(img.path, "from site-z", source_uuid=img.id, source_t="site-z", source_cs="site-z")
    out = migrate_on_lab(img.id, remote_python=remote_python)
    assert out.status == "finished", out.meta.get("error")
    assert out.result == {"dest_image_id": copy["id"], "already_present": True}
    assert out.meta["steps_done"] == ["locate", "dedupe", "cleanup"]
    assert sorted(c["id"] for c in copies_on_b(lab, img.id)) == sorted([copy["id"], elsewhere["id"]])


@pytest.mark.parametrize("origin", [{"source_cs": "site-a"}, {"source_t": "site-a"}],
                         ids=["source_cs-only", "source_t-only"])
def test_a_copy_with_either_site_key_is_found_via_the_api(lab, glance_image, migrate_on_lab, origin):
    img = glance_image()
    copy = lab.site_b.api().upload_image(img.path, "copy", source_uuid=img.id, **origin)
    out = migrate_on_lab(img.id, register={"via": "api", "cloud": "site-b"}, port=free_port())  # ssh unusable
    assert out.status == "finished", out.meta.get("error")
    assert out.result == {"dest_image_id": copy["id"], "already_present": True}


def test_leftover_of_a_crashed_run_is_replaced_not_duplicated(lab, glance_image, migrate_on_lab):
    img = glance_image()
    leftover = lab.site_b.api().create_image("half", "qcow2", "bare", source_uuid=img.id, source_cs="site-a")
    out = migrate_on_lab(img.id)
    assert out.status == "finished", out.meta.get("error")
    copies = copies_on_b(lab, img.id)
    assert [c["id"] for c in copies] == [out.result["dest_image_id"]]
    assert leftover["id"] != out.result["dest_image_id"] and copies[0]["status"] == "active"


def test_missing_image(lab, migrate_on_lab):
    missing = str(uuid.uuid4())
    out = migrate_on_lab(missing)
    assert out.status == "failed"
    assert out.meta["error"] == f"image {missing} not found on site-a"
    assert out.lines[-1] == f"Migration failed: image {missing} not found on site-a"
    assert "ImageNotFound" in out.exc_string


def test_wrong_host_key_fails_and_registers_nothing(lab, glance_image, migrate_on_lab, tmp_path):
    img = glance_image()
    head = lab.head_node
    known_hosts = impostor_known_hosts(tmp_path / "known_hosts", head.host, head.port)
    out = migrate_on_lab(img.id, known_hosts=str(known_hosts))
    assert out.status == "failed"
    assert out.meta["error"].startswith(f"host key of {head.host}:{head.port} does not match known_hosts file "
                                        f"{known_hosts}")
    assert "HostKeyError" in out.exc_string
    assert copies_on_b(lab, img.id) == []
    assert_no_temp_files(out, lab)


def test_unreachable_head_node_is_transient(lab, glance_image, migrate_on_lab):
    img = glance_image()
    port = free_port()
    out = migrate_on_lab(img.id, port=port)
    assert out.status == "failed"  # retries: 0 in this config; RQ would retry it otherwise
    assert out.meta["error"] == f"ssh {lab.head_node.host}:{port}: connection refused"
    assert "TransientError" in out.exc_string
    assert_no_temp_files(out, lab)


def test_broken_remote_env_file_is_a_clear_remote_glance_failure(lab, glance_image, migrate_on_lab):
    img = glance_image()
    out = migrate_on_lab(img.id, remote_env_file="/nonexistent/openrc.sh")
    assert out.status == "failed"
    assert out.meta["error"].startswith("remote glance image-list on site-b")
    assert "/nonexistent/openrc.sh" in out.meta["error"]
    assert copies_on_b(lab, img.id) == []
    assert_no_temp_files(out, lab)


@pytest.mark.parametrize("via", ["headnode-client", "glance-cli"])
def test_glance_failing_after_create_leaves_no_image_and_no_staged_file(lab, glance_image, migrate_on_lab, tmp_path,
                                                                         via):
    img = glance_image()
    wrapper = tmp_path / "dies-after-create"  # the head node is this machine: it can run it
    if via == "glance-cli":
        wrapper.write_text('#!/bin/sh\nif [ "$1" = image-create ]; then glance "$@"; '
                           'echo "Error: connection to glance lost" >&2; exit 1; fi\nexec glance "$@"\n')
        overrides = {"glance_command": str(wrapper), "remote_python": ""}
    else:  # python3 CLIENT create JSON
        wrapper.write_text('#!/bin/sh\nif [ "$2" = create ]; then python3 "$@"; '
                           'echo "Error: connection to glance lost" >&2; exit 1; fi\nexec python3 "$@"\n')
        overrides = {"remote_python": str(wrapper)}
    wrapper.chmod(0o755)
    out = migrate_on_lab(img.id, **overrides)
    assert out.status == "failed"
    assert out.meta["error"].endswith("failed (exit 1): Error: connection to glance lost")
    assert copies_on_b(lab, img.id) == []  # the half-made image was deleted
    assert_no_temp_files(out, lab)


@pytest.mark.parametrize("hostile", ["$(touch /tmp/migratio-x)", "../../etc/passwd"])
def test_hostile_image_id_is_rejected_before_any_command(lab, migrate_on_lab, hostile):
    out = migrate_on_lab(hostile, enqueue=lambda q: q.enqueue(migrate, hostile, "site-b"))  # bypass enqueue checks
    assert out.status == "failed"
    assert out.meta["error"] == f"invalid image id {hostile!r}: expected a UUID"
    assert out.meta.get("step") is None and out.meta.get("steps_done") is None  # no step ever started
    assert not Path("/tmp/migratio-x").exists()
    assert not (out.config.work_dir / out.job.id).exists()


def test_qcow2_with_a_backing_file_is_refused(lab, glance_image, migrate_on_lab, tmp_path):
    img = glance_image()
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(evil), "64M"],
                   check=True)
    tamper(lab, img.id, img.size, evil)  # same size, other bytes
    out = migrate_on_lab(img.id)
    assert out.status == "failed"
    assert out.meta["error"] == "image has a backing file ('/etc/shadow'): refused, only self-contained images are migrated"
    assert "UnsafeImage" in out.exc_string
    assert "transfer" not in out.meta["steps_done"]
    assert copies_on_b(lab, img.id) == []
    assert_no_temp_files(out, lab)

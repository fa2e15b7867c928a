"""The lab itself works: real Glance sites, site-b's head node over ssh, Redis."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from support.lab.glance_venv import ensure_glance_venv, find_uv, venv_spec
from support.lab.images import file_hashes, make_qcow2, qemu_img_info
from support.lab.lab import Lab
from support.lab.services import REPO, LabError, RedisServer, redis_ping, start_time
from tests.openstack_lab import impostor_known_hosts

pytestmark = pytest.mark.lab


def get_versions(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/versions", timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:  # Glance answers 300 Multiple Choices
        return e.code, json.load(e)


def test_lab_json_describes_the_running_services(lab):
    info = json.loads((lab.run_dir / "lab.json").read_text())
    assert set(info["sites"]) == {"site-a", "site-b"}
    assert info["redis_url"].startswith("redis://127.0.0.1:")
    assert set(info["head_node"]) >= {"host", "port", "user", "key_file", "known_hosts",
                                      "env_file", "staging_dir"}
    assert set(info["pids"]) == {"redis", "site-a", "site-b", "sshd"}
    for name, pid in info["pids"].items():
        assert start_time(pid) == info["pid_start_times"][name], name
    assert all(lab.health().values()), lab.health()


def test_both_sites_answer_versions(lab):
    for site in lab.sites.values():
        status, body = get_versions(site.glance_url)
        assert status in (200, 300)
        assert any(v["status"] == "CURRENT" and v["id"].startswith("v2")
                   for v in body["versions"]), body
    assert lab.site_a.glance_url != lab.site_b.glance_url


def test_uploaded_image_is_active_and_stored_with_glance_hashes(lab, glance_image):
    img = glance_image(site="site-a", virtual_size="64M", data_mib=4,
                       properties={"os_distro": "ubuntu", "migratio_test": "yes"})
    image = lab.site_a.api().get_image(img.id)
    assert image["status"] == "active"
    assert image["size"] == img.size
    assert image["checksum"] == img.checksum
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == img.os_hash_value
    assert image["virtual_size"] == 64 * 1024 * 1024
    assert (image["disk_format"], image["container_format"]) == ("qcow2", "bare")
    assert (image["os_distro"], image["migratio_test"]) == ("ubuntu", "yes")
    assert image["owner"] == lab.site_a.project_id

    stored = lab.site_a.images_dir / img.id
    assert stored.stat().st_size == img.size
    hashes = file_hashes(stored)
    assert (hashes["md5"], hashes["sha512"]) == (img.checksum, img.os_hash_value)


def test_sites_are_independent(lab, glance_image):
    a = glance_image(site="site-a")
    b = glance_image(site="site-b")
    api_a, api_b = lab.site_a.api(), lab.site_b.api()
    assert api_b.get_image(a.id) is None
    assert api_a.get_image(b.id) is None
    assert a.id not in {i["id"] for i in api_b.list_images()}
    assert b.id in {i["id"] for i in api_b.list_images()}
    assert not (lab.site_b.images_dir / a.id).exists()
    assert (lab.site_b.images_dir / b.id).exists()
    assert lab.site_a.images_dir != lab.site_b.images_dir


def test_head_node_runs_glance_cli_against_site_b(lab, glance_image):
    b = glance_image(site="site-b")
    a = glance_image(site="site-a")
    head = lab.head_node
    listing = head.run("glance image-list").stdout
    assert b.id in listing
    assert a.id not in listing
    show = head.run(f"glance image-show {b.id}").stdout
    assert b.checksum in show and "active" in show
    probe = head.staging_dir / "probe"
    assert head.run(f"whoami && touch {probe} && rm {probe} && echo ok").stdout.split() \
        == [head.user, "ok"]


def test_head_node_rejects_wrong_host_key(lab, tmp_path):
    head = lab.head_node
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    wrong = impostor_known_hosts(tmp_path / "wrong_known_hosts", head.host, head.port)

    for known_hosts in (empty, wrong):
        res = subprocess.run(head.ssh_command("true", known_hosts=known_hosts),
                             check=False, capture_output=True, text=True, timeout=60)
        assert res.returncode == 255, res
        assert "Host key verification failed" in res.stderr
    ok = subprocess.run(head.ssh_command("true"), check=False, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_redis_restart_keeps_the_port(lab):
    old_pid, port = lab.pids["redis"], lab.redis.port
    assert redis_ping("127.0.0.1", port)
    lab.restart("redis")
    assert lab.redis.port == port and lab.redis_url.endswith(f":{port}/0")
    assert redis_ping("127.0.0.1", port)
    assert lab.pids["redis"] != old_pid
    assert json.loads(lab.info_file.read_text())["pids"]["redis"] == lab.pids["redis"]
    assert start_time(old_pid) is None


def test_start_reuses_the_running_lab(lab):
    again = Lab(lab.root, lab.run_dir).start(reuse=True)
    assert again.reused
    assert again.pids == lab.pids
    status = subprocess.run([sys.executable, "-m", "support.lab", "status", "--root", str(lab.root),
                             "--run-dir", str(lab.run_dir)], check=False, capture_output=True,
                            text=True, cwd=REPO)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "lab running" in status.stdout


def test_stop_by_pid_only_stops_our_process(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        stranger = RedisServer(tmp_path / "redis", server.port)
        stranger.adopt(server.pid, server.started + 1)  # same pid, another process
        stranger.stop()
        assert redis_ping("127.0.0.1", server.port)
        adopted = RedisServer(tmp_path / "redis", server.port)
        adopted.adopt(server.pid, server.started)  # as `python3 -m support.lab stop` does from lab.json
        adopted.stop()
        assert not redis_ping("127.0.0.1", server.port)
        assert start_time(server.pid) is None
    finally:
        server.stop()


def test_failed_start_reports_the_log(tmp_path):
    class Broken(RedisServer):
        def command(self):
            return [*super().command(), "--no-such-directive", "x"]

    with pytest.raises(LabError) as err:
        Broken(tmp_path / "broken").start()
    assert "exited with status" in str(err.value)
    assert "no-such-directive" in str(err.value)  # from the log tail


def test_make_qcow2_has_real_data_and_holes(tmp_path):
    path = make_qcow2(tmp_path / "disk.qcow2", "256M", 8, seed=1)
    info = qemu_img_info(path)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 256 * 1024 * 1024
    extents = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(path)],
                                        check=True, capture_output=True, text=True).stdout)
    data = sum(e["length"] for e in extents if e["data"])
    assert data == 8 * 1024 * 1024
    assert 8 * 1024 * 1024 < path.stat().st_size < 10 * 1024 * 1024
    subprocess.run(["qemu-img", "check", str(path)], check=True, capture_output=True)
    again = make_qcow2(tmp_path / "again.qcow2", "256M", 8, seed=1)
    assert file_hashes(again) == file_hashes(path)


def test_glance_venv_is_made_once(lab):
    t0 = time.monotonic()
    venv = ensure_glance_venv(lab.root)
    assert time.monotonic() - t0 < 1
    assert (venv / ".lab-requirements").read_text() == venv_spec()
    version = subprocess.run([str(venv / "bin/python"), "-c",
                              "import importlib.metadata as m; print(m.version('glance'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert version == "33.0.0"


def test_missing_uv_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    with pytest.raises(LabError, match="uv not found"):
        find_uv()

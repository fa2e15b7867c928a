"""Streaming into the destination Glance: the remote shell line (run here by a real sh against
a stand-in `glance` script), the rate limit, and the job on the lab falling back to rsync."""

import io
import os
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest

from migratio.conf.sites import OpenStackOptions
from migratio.errors import CommandFailed, HostKeyError, TransientError
from migratio.openstack import glance_cli, stream
from tests.doubles import FAKE_GLANCE, IMAGE_ID
from tests.fixtures.lab import staged


@pytest.fixture
def head(tmp_path):
    """A fake head node: a glance stand-in and a staging dir; run(data, **line_args) runs the line."""
    fake = tmp_path / "fake"
    fake.mkdir()
    glance = tmp_path / "glance"
    glance.write_text(FAKE_GLANCE)
    glance.chmod(0o755)
    staged = tmp_path / "staging" / "img-job.qcow2"

    def run(data: bytes, size: int | None = None, properties=("source_uuid=x",), env_file=None, env=None):
        args = ["image-create", "--name=it's \"odd\"\n| id | nope |", *(f"--property={p}" for p in properties)]
        size = len(data) if size is None else size
        line = stream.remote_line(glance_cli.cli_commands([str(glance)], args, size), str(staged), size, env_file)
        return subprocess.run(["sh", "-c", line], input=data, capture_output=True,
                              env=env or {**os.environ, "FAKE_DIR": str(fake)}, timeout=60)

    run.fake, run.staged = fake, staged
    return run


def test_stream_uploads_every_byte_and_removes_the_staged_copy(head):
    data = os.urandom(3 * 1024 * 1024 + 17)
    proc = head(data)
    assert proc.returncode == 0, proc.stderr
    assert (head.fake / "uploaded").read_bytes() == data
    assert not head.staged.exists()
    assert stream.created_id(proc.stdout.decode()) == IMAGE_ID
    calls = (head.fake / "calls").read_text().splitlines()
    assert calls[0].startswith("image-create --name=it's \"odd\"")
    assert calls[-1] == f"image-upload --size={len(data)} {IMAGE_ID}"


def test_a_home_env_file_is_sourced_from_the_remote_users_home(head, tmp_path):
    """`remote_env_file: ~/.creds` (the legacy default): "$HOME" is expanded by the head node's shell."""
    home, decoy = tmp_path / "home", tmp_path / "decoy"
    home.mkdir(), decoy.mkdir()
    (home / ".creds").write_text(f"export FAKE_DIR={shlex.quote(str(head.fake))}\n")
    line = stream.remote_line(glance_cli.cli_commands(["glance"], ["image-create"], 1), "/s/x", 1, "~/.creds")
    assert line.startswith('. "$HOME"/.creds && { ')
    data = os.urandom(70000)
    proc = head(data, env_file="~/.creds", env={**os.environ, "HOME": str(home), "FAKE_DIR": str(decoy)})
    assert proc.returncode == 0, proc.stderr
    assert (head.fake / "uploaded").read_bytes() == data and not any(decoy.iterdir())


def test_create_failure_sends_nothing_to_glance(head):
    (head.fake / "fail-create").touch()
    proc = head(os.urandom(4096))
    assert proc.returncode == 1
    assert proc.stderr.decode().strip().endswith("Error: connection to glance lost")
    assert not (head.fake / "uploaded").exists()
    error = stream.outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), site(), "site-b")
    assert isinstance(error, CommandFailed) and not error.retryable
    assert str(error) == ("remote glance image-create on site-b (head.example.org:2222) failed (exit 1): "
                          "Error: connection to glance lost")


def test_upload_failure_is_named_and_retryable_when_glance_says_so(head):
    (head.fake / "fail-upload").touch()
    proc = head(os.urandom(4096))
    assert proc.returncode == 1
    error = stream.outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), site(), "site-b")
    assert str(error).startswith("remote glance image-upload on site-b") and error.retryable
    assert stream.created_id(proc.stdout.decode()) == IMAGE_ID  # so the job deletes it


def test_short_stream_never_leaves_an_image(head):
    data = os.urandom(8192)
    proc = head(data, size=len(data) + 1)  # fewer bytes arrive than announced
    assert proc.returncode == 1 and b"Size mismatch" in proc.stderr  # Glance refuses it
    assert head.staged.read_bytes() == data  # kept: a retry resumes from it with rsync
    head.staged.unlink()
    (head.fake / "lenient").touch()  # a store that would accept it: the line deletes it
    proc = head(data, size=len(data) + 1)
    assert proc.returncode == 4
    assert (head.fake / "deleted").read_text().split() == [IMAGE_ID]
    assert head.staged.read_bytes() == data  # kept: a retry resumes from it with rsync


def test_partial_copy_of_an_earlier_attempt_is_left_to_rsync(head):
    head.staged.parent.mkdir(parents=True)
    head.staged.write_bytes(b"half of it")
    proc = head(os.urandom(4096))
    assert proc.returncode == stream.PARTIAL_STAGED
    assert not (head.fake / "calls").exists()  # glance never ran
    assert head.staged.read_bytes() == b"half of it"


def test_ssh_failures_map_to_host_key_auth_and_transient():
    s = site()
    assert isinstance(stream.outcome(255, "", "Host key verification failed.", s, "b"), HostKeyError)
    lost = stream.outcome(255, "", "Connection reset by peer\n", s, "b")
    assert isinstance(lost, TransientError)
    assert str(lost) == "ssh to head.example.org:2222 failed while streaming the image: Connection reset by peer"
    assert stream.outcome(0, "", "", s, "b") is None


def test_pacer_holds_the_rate_and_saves_no_credit():
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    pacer = stream.Pacer(1000.0, clock=lambda: now[0], sleep=sleep)
    pacer.wrote(50)  # less than BURST ahead: no sleep yet
    assert slept == []
    for _ in range(5):
        pacer.wrote(190)
    assert now[0] == pytest.approx(1.0)  # 1000 bytes at 1000 B/s
    now[0] += 5.0  # a stall: no credit is saved up for it
    slept.clear()
    for _ in range(5):
        pacer.wrote(200)
    assert sum(slept) == pytest.approx(1.0)
    assert not stream.Pacer(None).wrote(10**9)  # no limit: never sleeps


def test_feeder_writes_the_file_and_reports_progress(tmp_path):
    path = tmp_path / "payload"
    data = os.urandom(2 * stream.CHUNK + 5)
    path.write_bytes(data)
    seen, out = [], io.BytesIO()
    stream.feeder(path, None, seen.append)(out)
    assert out.getvalue() == data and seen[-1] == len(data)


def site(**kw) -> OpenStackOptions:
    return OpenStackOptions(**{"host": "head.example.org", "user": "glance", "port": 2222,
                            "known_hosts": Path("/etc/migratio/known_hosts"), **kw})


# --------------------------------------------------------------------------- on the lab


@pytest.mark.lab
def test_streamed_with_a_bandwidth_limit_leaves_nothing_staged(lab, glance_image, migrate_on_lab):
    img = glance_image(virtual_size="64M", data_mib=6)
    out = migrate_on_lab(img.id, job_id=str(uuid.uuid4()), bandwidth_limit=20000)
    assert out.status == "finished", out.meta.get("error")
    dest = lab.site_b.api().get_image(out.result["dest_image_id"])
    assert (dest["status"], dest["size"], dest["os_hash_value"]) == ("active", img.size, img.os_hash_value)
    assert any(ln.startswith("Image transferred (") and "streamed into Glance on site-b" in ln for ln in out.lines)
    assert not staged(lab, img.id)


@pytest.mark.lab
def test_partial_copy_left_by_a_killed_attempt_is_resumed_with_rsync(lab, glance_image, migrate_on_lab):
    img = glance_image(virtual_size="64M", data_mib=6)
    job_id = str(uuid.uuid4())
    staged = Path(lab.head_node.staging_dir) / f"{img.id}-site-a.qcow2"  # the name migratio stages it as
    data = img.path.read_bytes()
    staged.write_bytes(data[: len(data) // 2])  # what a stream cut in the middle left behind
    out = migrate_on_lab(img.id, job_id=job_id)
    assert out.status == "finished", out.meta.get("error")
    dest = lab.site_b.api().get_image(out.result["dest_image_id"])
    assert (dest["status"], dest["os_hash_value"]) == ("active", img.os_hash_value)
    transferred = [ln for ln in out.lines if ln.startswith("Image transferred (")]
    assert transferred and "streamed" not in transferred[0]  # rsync, from the partial copy
    assert not staged.exists()
    assert [i["id"] for i in lab.site_b.api().list_images(source_uuid=img.id)] == [dest["id"]]

"""One of several ssh streams dies in the middle of a range (a PATH shim in front of the real ssh
kills it after a given number of bytes): the attempt fails transiently, no half image stays
registered, and the retry sends only the ranges that have no completion marker on the head node."""

import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from migratio.openstack import ranges
from migratio.units import MiB
from tests.fixtures.lab import staged

CUT_AFTER = 3 * MiB + MiB // 2  # bytes into one stream: 3 whole 1 MiB ranges, then half of the 4th
SHIM = """#!{python}
import os, subprocess, sys, time
real, log, token, cut_after = {real!r}, {log!r}, {token!r}, {cut_after}
if {end_mark!r} not in sys.argv[-1]:  # not a data stream: the real ssh as it is
    os.execv(real, [real, *sys.argv[1:]])
try:
    os.rename(token, token + ".taken")  # the first data stream only is cut
    cut = True
except FileNotFoundError:
    cut = False
child, sent = subprocess.Popen([real, *sys.argv[1:]], stdin=subprocess.PIPE), 0
try:
    while block := os.read(0, 65536):
        if cut and sent + len(block) > cut_after:
            child.stdin.write(block[:cut_after - sent]); child.stdin.flush()
            sent = cut_after
            time.sleep(1)  # what went before the cut reaches the head node; then the stream dies
            child.kill()
            break
        child.stdin.write(block)
        sent += len(block)
    else:
        child.stdin.close()
except BrokenPipeError:
    pass
code = child.wait()
with open(log, "a") as f:
    f.write(f"{{sent}} {{'cut' if cut else code}}\\n")
sys.exit(255 if cut else code)
"""


@pytest.fixture
def cut_one_stream(tmp_path, monkeypatch):
    """An `ssh` on PATH that cuts the first data stream after CUT_AFTER bytes; returns the log of
    what each data stream passed on (`<bytes> <exit or cut>` lines)."""
    shims, log, token = tmp_path / "shims", tmp_path / "streams.log", tmp_path / "cut-once"
    shims.mkdir()
    token.touch()
    shim = shims / "ssh"
    shim.write_text(SHIM.format(python=sys.executable, real=shutil.which("ssh"), log=str(log), token=str(token),
                                cut_after=CUT_AFTER, end_mark=ranges.END_MARK))
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{Path(shutil.which('ssh')).parent}:/usr/bin:/bin")
    return log


@pytest.mark.lab
def test_a_stream_cut_mid_range_is_retried_and_only_missing_ranges_are_sent(lab, glance_image, migrate_on_lab,
                                                                          cut_one_stream):
    img = glance_image(virtual_size="256M", data_mib=24)  # converted to raw: 24 ranges of 1 MiB
    out = migrate_on_lab(img.id, job_id=str(uuid.uuid4()), streams=3, disk_format="raw",
                         config_keys={"retries": 1, "retry_intervals": [0]})
    assert out.status == "finished", out.exc_string
    failed = [ln for ln in out.lines if ln.startswith("Migration attempt failed, will retry: ")]
    assert len(failed) == 1 and "ssh stream " in failed[0] and f"sending image {img.id}" in failed[0], out.lines
    streams = [ln.split() for ln in cut_one_stream.read_text().splitlines()]
    assert [s[1] for s in streams].count("cut") == 1
    passed = sum(int(s[0]) for s in streams)
    data = 24 * MiB
    # the ranges complete before the cut are not sent again: the two attempts together pass on the
    # data once, plus at most the ranges the three streams were in the middle of
    assert data < passed < data + 3 * MiB, (passed, streams)
    resent = re.search(r", (\d+) MiB sent\)", next(ln for ln in out.lines if ln.startswith("Image transferred (")))
    assert resent and int(resent.group(1)) <= 24 - 3  # the retry: the cut stream's 3 complete ranges are kept
    dest_id = out.result["dest_image_id"]
    assert out.result["verified"]
    assert [i["id"] for i in lab.site_b.api().list_images(source_uuid=img.id)] == [dest_id]  # no half image
    assert lab.site_b.api().get_image(dest_id)["status"] == "active"
    assert not staged(lab, img.id)


@pytest.mark.lab
def test_a_stream_cut_on_the_last_attempt_leaves_nothing_behind(lab, glance_image, migrate_on_lab, cut_one_stream):
    img = glance_image(virtual_size="256M", data_mib=24)
    out = migrate_on_lab(img.id, job_id=str(uuid.uuid4()), streams=3, disk_format="raw")
    assert out.status == "failed"
    assert out.lines[-1].startswith("Migration failed: ssh stream "), out.lines
    assert lab.site_b.api().list_images(source_uuid=img.id) == []  # the half-uploaded image was deleted
    assert not staged(lab, img.id)  # the final failure removes the staged file and its markers

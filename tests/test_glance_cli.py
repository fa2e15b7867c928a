"""Parsing the glance CLI's tables (printed by glanceclient's own printers) and the argv we send."""

import contextlib
import io
import json
import shlex
import uuid
from pathlib import Path

import pytest
from glanceclient.common import utils as gutils

from migratio.conf.sites import OpenStackOptions
from migratio.errors import CommandFailed, ImageNotFound
from migratio.openstack import headnode, headnode_client
from migratio.openstack.headnode import RemoteGlance
from migratio.openstack.ssh import command_line

HOSTILE = 'ubuntu "; rm -rf / | $(touch /tmp/x)\n| 11111111-2222-3333-4444-555555555555 | x | active |'


class Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def printed(fn, *args, **kw) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(*args, **kw)
    return out.getvalue()


def image(**kw):
    base = {"id": str(uuid.uuid4()), "name": "centos", "status": "active", "size": 4521984,
            "checksum": "a" * 32, "os_hash_algo": "sha512", "os_hash_value": "b" * 128,
            "disk_format": "qcow2", "container_format": "bare", "owner": "p1",
            "source_uuid": str(uuid.uuid4()), "source_cs": "site-a"}
    return {**base, **kw}


def test_list_table_with_hostile_names_yields_only_real_rows():
    images = [image(name=HOSTILE, status="queued"), image(name="a | b", status="active")]
    text = printed(gutils.print_list, [Obj(**i) for i in images],
                   ["ID", "Name", "Disk_format", "Container_format", "Size", "Status", "Owner"])
    assert headnode.parse_list(text) == [{"id": images[0]["id"], "status": "queued"},
                                           {"id": images[1]["id"], "status": "active"}]


def test_empty_list_table():
    text = printed(gutils.print_list, [], ["ID", "Name", "Disk_format", "Container_format", "Size",
                                           "Status", "Owner"])
    assert headnode.parse_list(text) == []


def test_show_table_keeps_values_verbatim_and_long_hashes_whole():
    img = image(name=HOSTILE, note="x | y")
    record = headnode.parse_show(printed(gutils.print_dict, img, max_column_width=100000))
    assert record["name"] == HOSTILE
    assert record["note"] == "x | y"
    assert record["os_hash_value"] == "b" * 128
    assert record["id"] == img["id"] and record["status"] == "active"


class FakeShell:
    """Records the argv it is asked to run; answers from a queue."""

    where = "head:22"

    def __init__(self, *answers):
        self.answers, self.calls, self.stdins = list(answers), [], []

    def run(self, argv, env_file=None, timeout=None, pty=False, stdin=b""):
        self.calls.append((list(argv), env_file))
        self.stdins.append(stdin)
        return self.answers.pop(0)


def site(**kw):
    """A site whose queries use the glance CLI (remote_python: null), unless kw says otherwise."""
    return OpenStackOptions(host="head", user="u", remote_env_file="/etc/glance env.sh",
                         **{"remote_python": None, **kw})


def test_create_sends_each_value_as_one_quoted_argument():
    new = image(name=HOSTILE)
    shell = FakeShell((0, printed(gutils.print_dict, new), ""))
    created = []
    image_id = RemoteGlance(shell, site(), "site-b").create_from_file(
        name=HOSTILE, disk_format="raw", container_format="bare",
        properties={"source_uuid": new["source_uuid"], "note": "--file=/etc/shadow"},
        path="/staging/x.raw", min_disk=10, created=created)
    assert image_id == new["id"] and created == [new["id"]]
    argv, env_file = shell.calls[0]
    assert argv == ["glance", "image-create", f"--name={HOSTILE}", "--disk-format=raw",
                    "--container-format=bare", "--min-disk=10",
                    f"--property=source_uuid={new['source_uuid']}", "--property=note=--file=/etc/shadow",
                    "--file=/staging/x.raw"]
    line = command_line(argv, env_file)
    assert line.startswith(". '/etc/glance env.sh' && glance image-create ")
    assert shlex.split(line)[3:] == argv  # the remote shell sees exactly these arguments


def test_failed_create_still_reports_the_id_for_cleanup():
    half = image(status="queued")
    shell = FakeShell((1, printed(gutils.print_dict, half), "HTTP 503 Service Unavailable"))
    created = []
    with pytest.raises(CommandFailed, match="remote glance image-create on site-b .* failed") as info:
        RemoteGlance(shell, site(), "site-b").create_from_file(
            name="n", disk_format="qcow2", container_format="bare", properties={}, path="/s/x", created=created)
    assert created == [half["id"]]
    assert info.value.retryable


def test_find_lists_once_then_shows_each_hit():
    hit = image()
    listing = printed(gutils.print_list, [Obj(**hit)],
                      ["ID", "Name", "Disk_format", "Container_format", "Size", "Status", "Owner"])
    shell = FakeShell((0, listing, ""), (0, printed(gutils.print_dict, hit, max_column_width=100000), ""))
    found = RemoteGlance(shell, site(glance_command="/opt/glance/bin/glance --insecure"), "site-b").find(
        {"source_uuid": hit["source_uuid"], "source_cs": "site-a"})
    assert [f["id"] for f in found] == [hit["id"]]
    assert shell.calls[0][0] == ["/opt/glance/bin/glance", "--insecure", "--verbose", "image-list",
                                 f"--property-filter=source_uuid={hit['source_uuid']}",
                                 "--property-filter=source_cs=site-a"]
    assert shell.calls[1][0][-1] == hit["id"]


def test_show_of_a_missing_image_and_bad_ids():
    shell = FakeShell((1, "", "No image with an ID of 'x' exists."))
    missing = str(uuid.uuid4())
    with pytest.raises(ImageNotFound, match=f"image {missing} not found on site-b"):
        RemoteGlance(shell, site(), "site-b").show(missing)
    with pytest.raises(Exception, match="invalid image id"):
        RemoteGlance(FakeShell(), site(), "site-b").delete("$(reboot)")


def test_other_failures_are_permanent_with_the_last_stderr_line():
    shell = FakeShell((2, "", "sh: 1: .: cannot open /etc/glance env.sh: No such file\n"))
    with pytest.raises(CommandFailed) as info:
        RemoteGlance(shell, site(), "site-b").find({"source_uuid": "x"})
    assert not info.value.retryable
    assert str(info.value).endswith("failed (exit 2): sh: 1: .: cannot open /etc/glance env.sh: No such file")



def test_find_is_one_run_of_the_head_node_client_with_the_filters_as_arguments():
    hit = image(name=HOSTILE)
    shell = FakeShell((0, json.dumps([hit, {"id": "not-a-uuid"}]), ""))
    glance = RemoteGlance(shell, site(remote_python="/usr/bin/python3 -I"), "site-b")
    found = glance.find({"source_uuid": hit["source_uuid"], "source_cs": "site-a"})
    assert [f["id"] for f in found] == [hit["id"]] and found[0]["name"] == HOSTILE
    argv, env_file = shell.calls[0]
    assert argv == ["/usr/bin/python3", "-I", "-", "find", f"source_uuid={hit['source_uuid']}", "source_cs=site-a"]
    assert env_file == "/etc/glance env.sh"
    assert shell.stdins[0] == Path(headnode_client.__file__).read_bytes()  # the client itself, on stdin


@pytest.mark.parametrize("code, stderr", [(127, "sh: 1: python3: not found"),
                                          (3, "these credentials (OS_AUTH_TYPE/OS_CLOUD) need the glance CLI")])
def test_without_python_or_with_cli_only_credentials_the_cli_takes_over(code, stderr, caplog):
    hit = image()
    shell = FakeShell((code, "", stderr), (0, printed(gutils.print_dict, hit, max_column_width=100000), ""),
                      (0, "", ""))
    glance = RemoteGlance(shell, site(remote_python="python3"), "site-b")
    assert glance.show(hit["id"])["checksum"] == hit["checksum"]
    assert glance.delete(hit["id"]) is True
    assert [argv[:2] for argv, _ in shell.calls] == [["python3", "-"], ["glance", "image-show"],
                                                      ["glance", "image-delete"]]  # asked once, then the CLI
    assert stderr.split(":")[-1].strip() in caplog.text


def test_head_node_client_answers_are_mapped_like_the_cli_ones():
    missing = str(uuid.uuid4())
    shell = FakeShell((4, "", "HTTP 404 Not Found"), (4, "", "HTTP 404 Not Found"),
                      (4, "", "HTTP 404 Not Found: GET http://glance:9292/wrong/v2/images"),
                      (5, "", "HTTP 503 Service Unavailable: GET http://glance:9292/v2/images"),
                      (6, "", "Unable to establish connection to http://glance:9292/v2/images: refused"),
                      (5, "", "HTTP 403 Forbidden: DELETE http://glance:9292/v2/images/x"))
    glance = RemoteGlance(shell, site(remote_python="python3"), "site-b")
    with pytest.raises(ImageNotFound, match=f"image {missing} not found on site-b"):
        glance.show(missing)
    assert glance.delete(missing) is False
    with pytest.raises(CommandFailed, match="remote glance image-list on site-b .* HTTP 404 Not Found: GET"):
        glance.find({"source_uuid": missing})  # a 404 of the list: a wrong endpoint, not a missing image
    for retryable in (True, True, False):
        with pytest.raises(CommandFailed, match="remote glance image-(list|delete) on site-b") as info:
            glance.find({"source_uuid": missing}) if retryable else glance.delete(missing)
        assert info.value.retryable is retryable


def test_install_client_puts_it_in_the_staging_dir_and_checks_the_credentials():
    shell = FakeShell((0, "{}\n", ""), (127, "", "sh: 1: exec: python3: not found"))
    glance = RemoteGlance(shell, site(remote_python="python3"), "site-b")
    path = glance.install_client("/var/tmp/migratio staging")
    assert path.startswith("/var/tmp/migratio staging/.migratio-glance-") and path.endswith(".py")
    argv, env_file = shell.calls[0]
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", "/var/tmp/migratio staging", path, "python3", path, "probe"]
    assert env_file == "/etc/glance env.sh" and shell.stdins[0] == Path(headnode_client.__file__).read_bytes()
    other = RemoteGlance(shell, site(remote_python="python3"), "site-b")
    assert other.install_client("/staging") is None and other.cli_reason == "sh: 1: exec: python3: not found"
    assert RemoteGlance(FakeShell(), site(), "site-b").install_client("/staging") is None  # remote_python: null

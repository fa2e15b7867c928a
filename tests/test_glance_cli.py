"""The destination Glance through the head node: parsing the glance CLI's tables (printed by
glanceclient's own printers), the argv we send, migratio's client there with the CLI as its
fallback, and the factory that picks the implementation."""

import contextlib
import io
import json
import shlex
import uuid
from pathlib import Path

import pytest
from glanceclient.common import utils as gutils

from migratio.conf.sites import OpenStackOptions, RegisterOptions
from migratio.errors import CommandFailed, ImageNotFound
from migratio.openstack import glance_cli, headnode, headnode_client
from migratio.openstack.destination import open_destination
from migratio.openstack.glance_cli import CliGlance
from migratio.openstack.glance_protocol import NewImage, Payload
from migratio.openstack.headnode import HeadNodeGlance
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
    assert glance_cli.parse_list(text) == [{"id": images[0]["id"], "status": "queued"},
                                           {"id": images[1]["id"], "status": "active"}]


def test_empty_list_table():
    text = printed(gutils.print_list, [], ["ID", "Name", "Disk_format", "Container_format", "Size",
                                           "Status", "Owner"])
    assert glance_cli.parse_list(text) == []


def test_show_table_keeps_values_verbatim_and_long_hashes_whole():
    img = image(name=HOSTILE, note="x | y")
    record = glance_cli.parse_show(printed(gutils.print_dict, img, max_column_width=100000))
    assert record["name"] == HOSTILE
    assert record["note"] == "x | y"
    assert record["os_hash_value"] == "b" * 128
    assert record["id"] == img["id"] and record["status"] == "active"


class FakeShell:
    """Records the argv it is asked to run; answers from a queue."""

    where = "head:22"

    def __init__(self, *answers):
        self.answers, self.calls, self.stdins = list(answers), [], []
        self.closed = False

    def run(self, argv, env_file=None, timeout=None, pty=False, stdin=b""):
        self.calls.append((list(argv), env_file))
        self.stdins.append(stdin)
        return self.answers.pop(0)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def site(**kw):
    """A site whose queries use the glance CLI (remote_python: null), unless kw says otherwise."""
    return OpenStackOptions(host="head", user="u", remote_env_file="/etc/glance env.sh",
                         **{"remote_python": None, **kw})


def new_image(**kw) -> NewImage:
    return NewImage(**{"name": "n", "disk_format": "qcow2", "container_format": "bare", "properties": {},
                       "min_disk": 0, "min_ram": 0, **kw})


def staged(path: str) -> Payload:
    return Payload(Path("/work/job/payload"), path)


def test_create_sends_each_value_as_one_quoted_argument():
    new = image(name=HOSTILE)
    shell = FakeShell((0, printed(gutils.print_dict, new), ""))
    created = []
    record = new_image(name=HOSTILE, disk_format="raw", min_disk=10,
                       properties={"source_uuid": new["source_uuid"], "note": "--file=/etc/shadow"})
    image_id = CliGlance(shell, site(), "site-b").register(record, staged("/staging/x.raw"), created, None)
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
        CliGlance(shell, site(), "site-b").register(new_image(), staged("/s/x"), created, None)
    assert created == [half["id"]]
    assert info.value.retryable


def test_find_lists_once_then_shows_each_hit():
    hit = image()
    listing = printed(gutils.print_list, [Obj(**hit)],
                      ["ID", "Name", "Disk_format", "Container_format", "Size", "Status", "Owner"])
    shell = FakeShell((0, listing, ""), (0, printed(gutils.print_dict, hit, max_column_width=100000), ""))
    found = CliGlance(shell, site(glance_command="/opt/glance/bin/glance --insecure"), "site-b").find(
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
        CliGlance(shell, site(), "site-b").show(missing)
    with pytest.raises(Exception, match="invalid image id"):
        CliGlance(FakeShell(), site(), "site-b").delete("$(reboot)")
    with pytest.raises(Exception, match="invalid image id"):
        HeadNodeGlance(FakeShell(), site(remote_python="python3"), "site-b").delete("$(reboot)")


def test_other_failures_are_permanent_with_the_last_stderr_line():
    shell = FakeShell((2, "", "sh: 1: .: cannot open /etc/glance env.sh: No such file\n"))
    with pytest.raises(CommandFailed) as info:
        CliGlance(shell, site(), "site-b").find({"source_uuid": "x"})
    assert not info.value.retryable
    assert str(info.value).endswith("failed (exit 2): sh: 1: .: cannot open /etc/glance env.sh: No such file")



def test_find_is_one_run_of_the_head_node_client_with_the_filters_as_arguments():
    hit = image(name=HOSTILE)
    shell = FakeShell((0, json.dumps([hit, {"id": "not-a-uuid"}]), ""))
    glance = HeadNodeGlance(shell, site(remote_python="/usr/bin/python3 -I"), "site-b")
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
    glance = HeadNodeGlance(shell, site(remote_python="python3"), "site-b")
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
    glance = HeadNodeGlance(shell, site(remote_python="python3"), "site-b")
    with pytest.raises(ImageNotFound, match=f"image {missing} not found on site-b"):
        glance.show(missing)
    assert glance.delete(missing) is False
    with pytest.raises(CommandFailed, match="remote glance image-list on site-b .* HTTP 404 Not Found: GET"):
        glance.find({"source_uuid": missing})  # a 404 of the list: a wrong endpoint, not a missing image
    for retryable in (True, True, False):
        with pytest.raises(CommandFailed, match="remote glance image-(list|delete) on site-b") as info:
            glance.find({"source_uuid": missing}) if retryable else glance.delete(missing)
        assert info.value.retryable is retryable


def test_the_stream_gets_the_client_installed_in_the_staging_dir_once_it_authenticated():
    shell = FakeShell((0, "{}\n", ""), (127, "", "sh: 1: exec: python3: not found"))
    record = new_image(name=HOSTILE)
    glance = HeadNodeGlance(shell, site(remote_python="python3", staging_dir="/var/tmp/migratio staging"), "site-b")
    commands = glance.stream_commands(record, 4096)
    argv, env_file = shell.calls[0]
    path = argv[5]
    assert path.startswith("/var/tmp/migratio staging/.migratio-glance-") and path.endswith(".py")
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", "/var/tmp/migratio staging", path, "python3", path, "probe"]
    assert env_file == "/etc/glance env.sh" and shell.stdins[0] == Path(headnode_client.__file__).read_bytes()
    assert commands == headnode.client_commands(["python3"], path, record, 4096)
    other = HeadNodeGlance(shell, site(remote_python="python3"), "site-b")
    cli = glance_cli.cli_commands(["glance"], glance_cli.create_args(**record), 4096)
    assert other.stream_commands(record, 4096) == cli and other.cli_reason == "sh: 1: exec: python3: not found"
    assert len(shell.calls) == 2
    idle = FakeShell()
    with open_destination(site(), "site-b", api=None, connect=lambda options: idle) as glance:  # remote_python: null
        assert glance.stream_commands(record, 4096) == cli
    assert idle.calls == [] and idle.closed


class Api:
    """A Glance API client that records what it is asked."""

    site = "127.0.0.1:9292"

    def __init__(self):
        self.calls = []

    def create(self, **fields):
        self.calls.append(("create", fields))
        return "11111111-2222-3333-4444-555555555555"

    def upload(self, image_id, path, progress=None):
        self.calls.append(("upload", image_id, path))


def test_the_factory_picks_the_api_the_head_node_client_or_the_cli():
    api = Api()
    via_api = OpenStackOptions(host="head", user="u", register=RegisterOptions(via="api", cloud="b"))
    with open_destination(via_api, "site-b", api=lambda cloud: api, connect=None) as glance:
        assert api.site == "site-b"  # its messages name the site
        assert glance.stream_commands(new_image(), 1) is None  # nothing runs on the head node
        created = []
        image_id = glance.register(new_image(), staged("/s/x"), created, None)
    assert created == [image_id] and api.calls[1] == ("upload", image_id, Path("/work/job/payload"))
    for options, answer, first in ((site(remote_python="python3"), "[]", ["python3", "-", "find"]),
                                   (site(), "", ["glance", "--verbose", "image-list"])):
        shell = FakeShell((0, answer, ""))
        with open_destination(options, "site-b", api=None, connect=lambda o: shell) as glance:
            assert glance.find({"source_uuid": "x"}) == []
        assert shell.calls[0][0][:3] == first and shell.closed

"""Property names cannot steer what migratio reads from glance CLI tables (issue 14, item 5).

A table shows a property name padded like a field name: "id ", " id", "status " or "a\\nid" read
as `id`/`status`. Tables are printed by glanceclient's own printer, and read by the real awk
the stream's shell line runs and by the real glance CLI on the lab's head node.
"""

import contextlib
import io
import subprocess
import uuid
from pathlib import Path

import pytest
from glanceclient.common import utils as gutils

from migratio.conf.sites import OpenStackOptions
from migratio.errors import PermanentError
from migratio.openstack import glance_cli, stream
from migratio.openstack.glance_cli import AmbiguousTable, CliGlance
from migratio.openstack.ssh import RemoteShell

VICTIM = "11111111-2222-4333-8444-555555555555"
HOSTILE_NAMES = {
    " id": VICTIM,  # sorts before the real `id` row
    "id ": VICTIM,  # after it
    "a\nid": VICTIM,  # a second line of its name cell reads `id`
    "status ": "active",
    "owner\u00a0": "someone-else",
    "size\t": "1",
}


def printed(record: dict, **kw) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gutils.print_dict(record, **kw)
    return out.getvalue()


def record(**props) -> dict:
    return {"id": str(uuid.uuid4()), "name": "centos", "status": "queued", "owner": "lab-project", "size": None,
            "checksum": None, "disk_format": "qcow2", "container_format": "bare", **props}


def awk_id(table: str) -> str:
    """What the stream's shell line takes as the new image's id from this create output."""
    commands = glance_cli.cli_commands(["glance"], ["image-create"], 1)
    return subprocess.run(["sh", "-c", commands.id_of], input=table, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_property_named_like_a_field_makes_the_table_refused(name):
    table = printed(record(**{name: HOSTILE_NAMES[name]}), max_column_width=100000)
    with pytest.raises(AmbiguousTable):
        glance_cli.parse_show(table)
    assert stream.created_id(table) is None  # so the cleanup looks for what the attempt left instead


@pytest.mark.parametrize("name", [n for n, v in HOSTILE_NAMES.items() if v == VICTIM])
def test_the_stream_takes_no_id_from_a_create_table_with_two_id_rows(name):
    real = record(**{name: VICTIM})
    assert awk_id(printed(real)) == ""  # the line then says "no image id" and uploads nothing
    assert awk_id(printed(record(note=f"x\n| id | {VICTIM} |"))) != VICTIM  # values never count
    clean = record(note="a | id | b")
    assert awk_id(printed(clean)) == clean["id"]


def test_clean_tables_still_read_whole():
    clean = record(name="a\n| id | x |", note="v\u2028| id | y |", os_hash_value="b" * 128, checksum="c" * 32)
    parsed = glance_cli.parse_show(printed(clean))  # 80 columns: the hash wraps onto a continuation row
    wrapped = "b" * 80 + "\n" + "b" * 48
    assert (parsed["id"], parsed["status"], parsed["os_hash_value"]) == (clean["id"], "queued", wrapped)
    parsed = glance_cli.parse_show(printed(clean, max_column_width=100000))  # as image-show is asked
    assert (parsed["id"], parsed["status"], parsed["os_hash_value"]) == (clean["id"], "queued", "b" * 128)
    assert parsed["name"] == "a\n| id | x |" and parsed["note"] == "v\u2028| id | y |"


@pytest.mark.parametrize("name, fine", [("os_distro", True), ("hw disk bus", True), ("id ", False),
                                        (" x", False), ("a\nb", False), ("a|b", False), ("", False),
                                        ("x\u2028y", False)])
def test_which_property_names_a_table_shows_as_themselves(name, fine):
    assert glance_cli.table_safe(name) is fine


# --------------------------------------------------------------------------- the real glance CLI


def head_site(lab) -> OpenStackOptions:
    head = lab.head_node
    return OpenStackOptions(host=head.host, port=head.port, user=head.user, key_file=Path(head.key_file),
                            known_hosts=Path(head.known_hosts), staging_dir=str(head.staging_dir),
                            remote_env_file=str(head.env_file), remote_python=None, connect_timeout=10)


@pytest.mark.lab
def test_the_glance_cli_never_judges_a_queued_image_active_by_a_property(lab, clean_lab_images):
    source_uuid = str(uuid.uuid4())
    api = lab.site_b.api()
    fake = api.create_image("queued, claims active", **{"status ": "active", "owner ": "x", "source_uuid": source_uuid})
    plain = api.create_image("queued", source_uuid=source_uuid)
    with RemoteShell.connect(head_site(lab)) as shell:
        cli = CliGlance(shell, head_site(lab), "site-b")
        with pytest.raises(PermanentError, match=f"remote glance image-show {fake['id']} on site-b: ambiguous"):
            cli.show(fake["id"])
        found = cli.find({"source_uuid": source_uuid})
    assert [(i["id"], i["status"]) for i in found] == [(plain["id"], "queued")]  # the other one is left out
    assert api.get_image(fake["id"])["status"] == "queued"

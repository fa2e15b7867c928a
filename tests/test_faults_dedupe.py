"""A copy a crashed or older run left at the destination: which active copy counts as "already
present" (only one holding the bytes that would be sent) and what the operator must decide
(pure logic, in-memory destination)."""

import hashlib

import pytest

from migratio.errors import PermanentError
from migratio.steps import openstack as os_steps
from tests.builders import right_copy
from tests.doubles import MemoryGlance


def test_an_active_copy_with_the_sources_bytes_is_already_present(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    copy = right_copy(ctx)
    dest.images = {copy["id"]: copy}
    assert os_steps.Dedupe().run(ctx) is None
    assert ctx.finished and ctx.result == {"dest_image_id": copy["id"], "already_present": True}


@pytest.mark.parametrize("wrong", [{"size": 1}, {"checksum": "0" * 32}, {"os_hash_value": "f" * 128}])
def test_an_active_copy_with_other_bytes_is_deleted_and_migrated_again(make_ctx, wrong):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    copy = right_copy(ctx, **wrong)
    dest.images = {copy["id"]: copy}
    assert os_steps.Dedupe().run(ctx) == "No copy on site-b yet"
    assert not ctx.finished and dest.deleted == [copy["id"]]


def test_a_converted_copy_is_checked_against_the_md5_claimed_when_it_was_sent(make_ctx, tmp_path):
    dest = MemoryGlance()
    ctx = make_ctx(dest, disk_format="raw")
    claimed = {"disk_format": "raw", "size": 123, "checksum": "a" * 32, os_steps.PAYLOAD_MD5: "a" * 32}
    good, bad = right_copy(ctx, **claimed), right_copy(ctx, **{**claimed, "checksum": "b" * 32})
    dest.images = {bad["id"]: bad, good["id"]: good}
    assert os_steps.Dedupe().run(ctx) is None
    assert ctx.result["dest_image_id"] == good["id"] and dest.deleted == [bad["id"]]

    unclaimed = right_copy(ctx, disk_format="raw")  # e.g. made by the old tool: nothing to check it by
    dest.images = {unclaimed["id"]: unclaimed}
    with pytest.raises(PermanentError, match=f"image {unclaimed['id']} on site-b is an active copy of "
                                             f"{ctx.job.image_id} but its data cannot be checked"):
        os_steps.Dedupe().run(ctx)
    assert dest.deleted == [bad["id"]]  # never deleted without proof


def test_a_copy_in_another_format_needs_the_operator(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest, disk_format="raw")
    copy = right_copy(ctx)  # qcow2, but the site conf now asks for raw
    dest.images = {copy["id"]: copy}
    with pytest.raises(PermanentError, match="has disk format qcow2, not raw: delete it to migrate the image again"):
        os_steps.Dedupe().run(ctx)
    assert dest.deleted == []


def test_a_converted_payload_is_registered_with_its_md5_claim(make_ctx, tmp_path):
    ctx = make_ctx(MemoryGlance(), disk_format="raw")
    converted = tmp_path / "converted.raw"
    converted.write_bytes(b"converted bytes")
    ctx.payload, ctx.payload_format, ctx.payload_hash = converted, "raw", {}
    properties = os_steps.record_fields(ctx)["properties"]
    assert properties[os_steps.PAYLOAD_MD5] == hashlib.md5(b"converted bytes").hexdigest()
    assert "owner_specified.openstack.md5" in properties and properties["source_uuid"] == ctx.job.image_id

"""Step logic with an in-memory destination (pure logic; the lab tests run the real thing)."""

import hashlib
import uuid

import pytest

from migratio.errors import PermanentError, VerificationFailed
from migratio.steps import common, openstack, openstack_staged
from tests.builders import DATA, STALE_ORIGIN, origin_of, ours, right_copy
from tests.doubles import MemoryGlance


def test_dedupe_finds_an_active_copy_and_removes_leftovers(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    active = right_copy(ctx)
    queued, killed = ours(ctx, "queued"), ours(ctx, "killed")
    other_site = {**ours(ctx, "active"), "source_t": "site-z", "source_cs": "site-z"}
    dest.images = {i["id"]: i for i in (active, queued, killed, other_site)}
    assert openstack.Dedupe().run(ctx) is None
    assert ctx.finished and ctx.result == {"dest_image_id": active["id"], "already_present": True}
    assert sorted(dest.deleted) == sorted([queued["id"], killed["id"]])
    assert dest.finds == 1
    assert dest.filters == [{"source_uuid": ctx.job.image_id}]  # one call; the site key is checked locally


@pytest.mark.parametrize("made_by", [
    {"source_t": None},  # an older migratio or the old tool: only source_cs
    {"source_cs": None},  # only source_t
    {"source_t": "site-z"},  # an older migratio that carried a migrated source's source_t over
], ids=["source_cs-only", "source_t-only", "stale-source_t"])
def test_dedupe_recognises_a_copy_by_either_site_key(make_ctx, made_by):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    copy = right_copy(ctx, **made_by)
    leftover = ours(ctx, "queued", **made_by)
    dest.images = {i["id"]: i for i in (copy, leftover)}
    assert openstack.Dedupe().run(ctx) is None
    assert ctx.finished and ctx.result == {"dest_image_id": copy["id"], "already_present": True}
    assert dest.deleted == [leftover["id"]]
    assert dest.finds == 1


def test_dedupe_ignores_copies_of_other_sites_and_images(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    others = [right_copy(ctx, source_t="site-z", source_cs="site-z"),
              ours(ctx, "queued", source_t=None, source_cs="site-z"),
              ours(ctx, "queued", source_t="site-z", source_cs=None),
              ours(ctx, "queued", source_uuid=None),
              right_copy(ctx, source_uuid=str(uuid.uuid4()))]
    dest.images = {i["id"]: i for i in others}
    assert openstack.Dedupe().run(ctx) == "No copy on site-b yet"
    assert not ctx.finished and dest.deleted == []


def test_cleanup_after_a_lost_create_answer_uses_the_same_recognition(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    mine = [ours(ctx, "queued"), ours(ctx, "saving", source_t=None), ours(ctx, "killed", source_cs=None)]
    kept = [right_copy(ctx), ours(ctx, "queued", source_t="site-z", source_cs="site-z")]
    dest.images = {i["id"]: i for i in (*mine, *kept)}
    openstack._delete_created(ctx, [])  # the id never came back
    assert sorted(dest.deleted) == sorted(i["id"] for i in mine)
    assert dest.filters == [{"source_uuid": ctx.job.image_id}]


def test_dedupe_without_copies_goes_on(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    assert openstack.Dedupe().run(ctx) == "No copy on site-b yet"
    assert not ctx.finished and dest.deleted == []


def test_dedupe_never_deletes_a_deactivated_copy(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    copy = ours(ctx, "deactivated")
    dest.images = {copy["id"]: copy}
    with pytest.raises(PermanentError, match=f"image {copy['id']} on site-b .* is deactivated: reactivate or delete"):
        openstack.Dedupe().run(ctx)
    assert dest.deleted == []


def test_register_and_verify_via_api(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    assert openstack.Transfer().run(ctx) is None  # via api: nothing to stage
    line = openstack.Register().run(ctx)
    image_id = ctx.result["dest_image_id"]
    assert line == f"Image registered as {image_id}"
    image = dest.images[image_id]
    assert (image["source_uuid"], image["source_cs"], image["os_distro"]) == (ctx.job.image_id, "site-a", "centos")
    assert origin_of(image) == ("site-a", ctx.job.image_id, "site-a")
    assert image["owner_specified.openstack.md5"] == "x"  # bytes unchanged: still true
    assert openstack.Verify().run(ctx) == f"Image verified (sha512 {hashlib.sha512(DATA).hexdigest()})"
    ctx.run_cleanups(failed=True)  # verified: the failure cleanup was dropped
    assert dest.deleted == []


def test_verify_deletes_a_copy_whose_hash_differs(make_ctx):
    dest = MemoryGlance(corrupt=True)
    ctx = make_ctx(dest)
    openstack.Register().run(ctx)
    image_id = ctx.result["dest_image_id"]
    with pytest.raises(VerificationFailed, match=f"image {image_id} on site-b has size 5001, but 5000 bytes were "
                                                 "sent; it was deleted"):
        openstack.Verify().run(ctx)
    assert dest.deleted == [image_id]


def test_verify_computes_a_hash_glance_uses_but_we_lack(make_ctx):
    dest = MemoryGlance(store_hash="sha256")
    ctx = make_ctx(dest)
    openstack.Register().run(ctx)
    assert openstack.Verify().run(ctx) == f"Image verified (sha256 {hashlib.sha256(DATA).hexdigest()})"
    assert ctx.payload_hash["sha256"] == hashlib.sha256(DATA).hexdigest()


def test_verify_catches_a_wrong_hash_of_the_right_size(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    openstack.Register().run(ctx)
    image_id = ctx.result["dest_image_id"]
    dest.images[image_id]["os_hash_value"] = "0" * 128
    with pytest.raises(VerificationFailed, match="has sha512 0000"):
        openstack.Verify().run(ctx)
    assert image_id not in dest.images


def test_failed_register_deletes_what_it_made(make_ctx):
    class FailingUpload(MemoryGlance):
        def upload(self, image_id, path, progress=None):
            raise PermanentError("Glance answered HTTP 413")

    dest = FailingUpload()
    ctx = make_ctx(dest)
    with pytest.raises(PermanentError):
        openstack.Register().run(ctx)
    assert len(dest.images) == 1
    ctx.run_cleanups(failed=True)
    assert dest.images == {}


def test_converted_payload_drops_stale_hash_hints(make_ctx, tmp_path):
    ctx = make_ctx(MemoryGlance())
    ctx.payload = tmp_path / "converted.raw"
    props = openstack.dest_properties(ctx)
    assert "owner_specified.openstack.md5" not in props
    assert props["os_distro"] == "centos" and props["source_uuid"] == ctx.job.image_id
    assert origin_of(props) == ("site-a", ctx.job.image_id, "site-a")


@pytest.mark.parametrize("converted", [False, True], ids=["same-bytes", "converted"])
def test_origin_of_a_source_that_is_itself_a_copy_is_replaced_by_ours(make_ctx, tmp_path, converted):
    ctx = make_ctx(MemoryGlance())
    ctx.image.properties.update(STALE_ORIGIN)
    if converted:
        ctx.payload, ctx.payload_format = tmp_path / "converted.raw", "raw"
        ctx.payload.write_bytes(DATA + b"converted")
        ctx.payload_hash = {}
    for props in (openstack.dest_properties(ctx), openstack.record_fields(ctx)["properties"]):
        assert origin_of(props) == ("site-a", ctx.job.image_id, "site-a")
        assert props["os_distro"] == "centos"
    assert ctx.image.properties["source_t"] == "site-z"  # the source's record itself is left alone


def test_register_replaces_the_stale_origin_of_a_migrated_source(make_ctx):
    dest = MemoryGlance()
    ctx = make_ctx(dest)
    ctx.image.properties.update(STALE_ORIGIN)
    openstack.Register().run(ctx)
    image = dest.images[ctx.result["dest_image_id"]]
    assert origin_of(image) == ("site-a", ctx.job.image_id, "site-a")
    assert openstack.Verify().run(ctx).startswith("Image verified (sha512 ")


def test_staged_path_is_the_same_for_every_job_of_an_image(make_ctx):
    ctx = make_ctx(MemoryGlance(), staging_dir="/var/tmp/stage")
    assert openstack_staged.staged_path(ctx) == f"/var/tmp/stage/{ctx.job.image_id}-site-a.qcow2"  # a retry resumes it


def test_convert_is_a_no_op_or_a_relabel_when_the_bytes_stay_the_same(make_ctx):
    ctx = make_ctx(MemoryGlance(), disk_format="qcow2")
    assert common.Convert().run(ctx) is None and ctx.payload == ctx.image.path
    ctx = make_ctx(MemoryGlance(), disk_format="raw")
    ctx.image.disk_format = "iso"
    assert common.Convert().run(ctx) is None
    assert (ctx.payload, ctx.payload_format) == (ctx.image.path, "raw")


def test_not_enough_space_is_named(tmp_path):
    with pytest.raises(Exception, match=f"not enough space in {tmp_path} for converting image x"):
        common.ensure_space(tmp_path, 1 << 60, "converting image x")

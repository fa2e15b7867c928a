"""Steps for OpenStack destinations: dedupe, transfer, register, verify, boot-check.

The destination Glance (the protocol in migratio.openstack.glance_protocol) is reached through
its head node over SSH (`register: {via: ssh}`, the default: the image is streamed over ssh into
Glance there, or rsync'ed to its staging dir first) or through its API from the worker
(`register: {via: api}`: uploaded straight from the file); migratio.openstack.destination picks.
"""

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from migratio import origin as origins
from migratio.conf.sites import Site
from migratio.errors import ConfigError, PermanentError, UnsafeImage, VerificationFailed
from migratio.local import hashes
from migratio.openstack import compression, rsync, staging_space
from migratio.openstack.destination import open_destination
from migratio.openstack.glance_cli import table_safe
from migratio.openstack.glance_protocol import Glance, ImageRecord, NewImage, Payload, StreamCommands
from migratio.pipeline.context import Context, Fact
from migratio.pipeline.runner import Step
from migratio.steps import openstack_ranges
from migratio.steps.common import SPACE_MARGIN
from migratio.steps.openstack_compare import PAYLOAD_MD5, copy_is_right, mismatch
from migratio.steps.openstack_copies import copies
from migratio.steps.openstack_staged import remove_staged_at_the_end, staged_path
from migratio.steps.openstack_stream import use_compression
from migratio.units import whole_mib

STALE = frozenset({"queued", "saving", "killed", "uploading", "importing"})  # left by a crashed run
GOING = frozenset({"deleted", "pending_delete"})  # on their way out: ignored
SETTLING = frozenset({"saving", "uploading", "importing"})
SETTLE_TIMEOUT = 600.0
REGISTER_CLEANUP = "delete the half-registered destination image"
CONVERTED_ONLY_PREFIX = "owner_specified.openstack."  # hashes of the source bytes: stale after convert


class Dedupe(Step):
    """One filtered list call: an active copy with the right bytes ends the job as 'already present'.

    Glance filters on one property set per call, so the call asks for source_uuid only and a copy
    counts as ours when source_t or source_cs (older copies have only that) names this site and
    the project we register into owns it (see migratio.steps.openstack_copies).

    Non-active copies (queued/saving/killed, from a crashed earlier run) and active copies whose
    size or hash differ from what would be sent are deleted, so a migration never leaves two
    images (or a wrong one) for one source.
    """

    name = "dedupe"
    needs = frozenset({Fact.IMAGE})

    def run(self, ctx: Context) -> str | None:
        refuse_table_unsafe_names(ctx)
        if ctx.site.openstack.register.via == "ssh" and ctx.retries_left < ctx.config.retries:
            remove_staged_at_the_end(ctx)  # a retry: an earlier attempt may have left a partial copy
        with destination(ctx) as dest:
            found = copies(ctx, dest)
            for image in found:
                if image.get("status") in STALE:
                    ctx.log.warning("deleting leftover image %s (%s) on %s", image["id"], image["status"], ctx.site.id)
                    dest.delete(str(image["id"]))
            active = [i for i in found if i.get("status") == "active" and copy_is_right(i, ctx, dest)]
        if active:
            if len(active) > 1:
                ctx.log.warning("%d active copies on %s: %s", len(active), ctx.site.id,
                                ", ".join(str(i["id"]) for i in active))
            ctx.dest_image_id, ctx.already_present = str(active[0]["id"]), True
            ctx.finished = True
            return None
        blocked = [i for i in found if i.get("status") not in STALE | GOING | {"active"}]  # wrong active: deleted
        if blocked:
            image = blocked[0]
            raise PermanentError(f"image {image['id']} on {ctx.site.id} is a copy of {ctx.job.image_id} but is "
                                 f"{image.get('status')}: reactivate or delete it, then retry")
        return f"No copy on {ctx.site.id} yet"


class Transfer(Step):
    """Sends the image to the head node (skipped for register via api).

    With `stream` (the default) it is piped over ssh straight into the destination Glance, which
    also registers it (over `streams` ssh connections at once: migratio.steps.openstack_ranges); a
    staged copy is kept on the way for a retry to resume from; `compress` (auto, true, false) says
    whether a single stream goes through zstd. Without `stream`, or when a partial staged copy of an
    earlier attempt exists: rsync to the staging dir (resumable, --partial; zstd with
    `compress: true`), registered by the next step.
    """

    name = "transfer"
    needs = frozenset({Fact.IMAGE, Fact.INSPECTED, Fact.PAYLOAD})

    def run(self, ctx: Context) -> str | None:
        options = ctx.site.openstack
        if options.register.via == "api":
            return None
        payload, remote_path = ctx.require_payload(), staged_path(ctx)
        with ctx.remote(options) as shell:  # before anything is staged: what it will really take
            staging_space.ensure_free(shell, options.staging_dir, staging_space.staged_bytes(payload) + SPACE_MARGIN,
                                      f"staging image {ctx.job.image_id}", ctx.site.id)
            compress = options.stream and use_compression(
                ctx, payload, lambda: compression.remote_version(shell, options.remote_env_file))
        remove = remove_staged_at_the_end(ctx)
        commands = _stream_commands(ctx, payload) if options.stream else None
        if commands is not None:  # (ensure_free made the staging dir)
            created: list[str] = []
            ctx.on_failure(REGISTER_CLEANUP, lambda: _delete_created(ctx, created))  # before anything exists
            line = openstack_ranges.send(ctx, commands, payload, remote_path, created, compress)
            if line:
                ctx.forget_exit_action(remove)  # the head node removed it once Glance had the image
                return line
            ctx.forget_failure_action(REGISTER_CLEANUP)  # nothing was made: the register step makes it
        size = payload.stat().st_size
        with ctx.remote(options) as shell:
            argv = rsync.rsync_argv(payload, remote_path, options, ctx.site.limits.bandwidth_limit, shell.ssh_options)
        start = ctx.clock()
        result = ctx.commands.run(argv, what="rsync", check=False,
                                  on_output=rsync.progress_callback(size, ctx.sending))
        if result.returncode != 0:
            raise rsync.failure(result.returncode, result.stderr_tail, options)
        ctx.sending(size, size)
        return f"Image transferred ({whole_mib(size)} in {ctx.clock() - start:.0f} s)"


class Register(Step):
    """Creates the destination image with the source's name, formats and user properties."""

    name = "register"
    needs = frozenset({Fact.IMAGE, Fact.PAYLOAD})
    provides = frozenset({Fact.DEST_IMAGE})

    def run(self, ctx: Context) -> str | None:
        if ctx.dest_image_id:  # streamed into Glance by the transfer step
            return f"Image registered as {ctx.dest_image_id}"
        payload = Payload(ctx.require_payload(), staged_path(ctx))
        created: list[str] = []
        ctx.on_failure(REGISTER_CLEANUP, lambda: _delete_created(ctx, created))
        image = record_fields(ctx)
        with destination(ctx) as dest:
            image_id = dest.register(image, payload, created, ctx.sending)
        ctx.dest_image_id, ctx.already_present = image_id, False
        return f"Image registered as {image_id}"


class Verify(Step):
    """The destination image must be active, with the size and hash of what was sent."""

    name = "verify"
    needs = frozenset({Fact.PAYLOAD, Fact.DEST_IMAGE})

    def run(self, ctx: Context) -> str | None:
        image_id = ctx.require_dest_image_id()
        with destination(ctx) as dest:
            record = _settled(ctx, dest, image_id)
            problem, checked = mismatch(record, ctx)
            if problem:
                dest.delete(image_id)
                ctx.forget_failure_action(REGISTER_CLEANUP)
                raise VerificationFailed(f"image {image_id} on {ctx.site.id} {problem}; it was deleted")
        ctx.forget_failure_action(REGISTER_CLEANUP)
        ctx.verified = checked
        algo = next((a for a in checked if a != "md5"), "md5")  # the strongest one Glance gave
        return f"Image verified ({algo} {checked[algo]})"


class BootCheck(Step):
    """Boots a server from the new image (flavor/network from the site conf), then deletes it."""

    name = "boot-check"
    needs = frozenset({Fact.DEST_IMAGE})

    @classmethod
    def conf_problem(cls, site: Site) -> str | None:
        """A flavor to boot, and the destination's own credentials (never this site's OS_*)."""
        if site.openstack.boot_check is None:
            return "pipeline has 'boot-check' but no 'boot_check' section"
        if site.openstack.register.cloud is None:
            return ("step 'boot-check' needs key 'register.cloud' (the destination's clouds.yaml cloud): "
                    "without it the server would boot with this site's credentials")
        return None

    def run(self, ctx: Context) -> str | None:
        options = ctx.site.openstack
        check, cloud = options.boot_check, options.register.cloud
        if check is None or cloud is None:
            raise ConfigError(f"{ctx.site.path}: {self.conf_problem(ctx.site)}")
        image_id = ctx.require_dest_image_id()
        nova = ctx.services.nova(cloud)
        nova.site = ctx.site.id
        server_id = nova.boot(f"migratio-boot-check-{image_id[:8]}", image_id, check.flavor, check.network)
        try:
            status, fault = nova.wait(server_id, check.timeout)
        finally:
            nova.delete(server_id)
        if status != "ACTIVE":
            deleted = ""
            if check.delete_image_on_failure:
                with destination(ctx) as dest:
                    dest.delete(image_id)
                deleted = "; the image was deleted"
            raise PermanentError(f"boot check on {ctx.site.id}: server from image {image_id} went to "
                                 f"{status}: {fault or 'no fault message'}{deleted}")
        return f"Boot check passed (server {server_id} ACTIVE, deleted)"


def destination(ctx: Context) -> AbstractContextManager[Glance]:
    """The destination Glance, opened once per job over the job's one connection and kept for
    its later steps (what its client learnt, e.g. the project or that it runs, is not asked again)."""
    if ctx.destination is None:
        with open_destination(ctx.site.openstack, ctx.site.id, ctx.services.glance, ctx.remote, install=True) as dest:
            ctx.destination = dest  # (ctx.remote leaves the connection open: closed when the job ends)
    return nullcontext(ctx.destination)


def refuse_table_unsafe_names(ctx: Context) -> None:
    """A source property name that a glance table would show as another one (" id", "status ") is
    refused before anything is sent: read back through the glance CLI, it could stand for that field."""
    image = ctx.require_image()
    unsafe = sorted(name for name in image.properties if not table_safe(name))
    if unsafe:
        raise UnsafeImage(f"image {image.id} has a property named {unsafe[0]!r}: a glance table would show it as "
                          "another name (spaces around it, a line break or '|'); refused, rename it on "
                          f"{ctx.config.name}")


def record_fields(ctx: Context) -> NewImage:
    """The destination record: the source's name, formats, minimums and properties + our origin."""
    refuse_table_unsafe_names(ctx)  # (dedupe did already, unless the pipeline has none)
    image, payload = ctx.require_image(), ctx.require_payload()
    properties = dest_properties(ctx)
    if payload != image.path:  # converted: a later dedupe checks the copy against this claim
        properties[PAYLOAD_MD5] = ctx.payload_hash.get("md5") or hashes.file_hashes(payload, ("md5",))["md5"]
    return NewImage(name=image.name, disk_format=ctx.payload_format, container_format=image.container_format,
                    properties=properties, min_disk=image.min_disk, min_ram=image.min_ram)


def _stream_commands(ctx: Context, payload: Path) -> StreamCommands | None:
    image = record_fields(ctx)
    with destination(ctx) as dest:
        return dest.stream_commands(image, payload.stat().st_size)


def origin(ctx: Context) -> dict[str, str]:
    return origins.origin(ctx.job.image_id, ctx.config.name)


def dest_properties(ctx: Context) -> dict[str, str]:
    """The source's user properties (minus stale hash hints after a conversion) + our origin.

    The origin keys always get our values: a source that is itself a copy (with source_t,
    source_uuid, source_cs of another site) never passes them on."""
    image = ctx.require_image()
    converted = ctx.payload != image.path
    props = {k: v for k, v in image.properties.items()
             if not (converted and k.startswith(CONVERTED_ONLY_PREFIX))}
    props.update(origin(ctx))
    return props


def _settled(ctx: Context, dest: Glance, image_id: str) -> ImageRecord:
    deadline = ctx.clock() + SETTLE_TIMEOUT
    while True:
        record = dest.show(image_id)
        if record.get("status") not in SETTLING or ctx.clock() > deadline:
            return record
        time.sleep(2)


def _delete_created(ctx: Context, created: list[str]) -> None:
    with destination(ctx) as dest:
        if created:
            for image_id in created:
                dest.delete(image_id)
            return
        for image in copies(ctx, dest):  # the id never came back: find what this run left
            if image.get("status") != "active":
                dest.delete(str(image["id"]))

"""Steps for OpenStack destinations: dedupe, transfer, register, verify, boot-check.

The destination Glance is reached either through the head node's `glance` CLI over SSH
(`register: {via: ssh}`, the default: the image is rsync'ed to its staging dir first) or
through its API from the worker (`register: {via: api}`: uploaded straight from the file).
"""

import contextlib
import os
import posixpath
import time
from typing import Any, Iterator

from .. import hashes, ids, transfer
from ..errors import ConfigError, PermanentError, VerificationFailed
from ..glance_cli import RemoteGlance
from ..pipeline import Context, Step

SOURCE_UUID, SOURCE_CS = "source_uuid", "source_cs"
STALE = frozenset({"queued", "saving", "killed", "uploading", "importing"})  # left by a crashed run
GOING = frozenset({"deleted", "pending_delete"})  # on their way out: ignored
SETTLING = frozenset({"saving", "uploading", "importing"})
SETTLE_TIMEOUT = 600.0
REGISTER_CLEANUP = "delete the half-registered destination image"
CONVERTED_ONLY_PREFIX = "owner_specified.openstack."  # hashes of the source bytes: stale after convert
MiB = 1024 * 1024


class Dedupe(Step):
    """One filtered list call: an active copy ends the job as 'already present'.

    Non-active copies (queued/saving/killed, from a crashed earlier run) are deleted, so a
    migration never leaves two images for one source.
    """

    name = "dedupe"

    def run(self, ctx: Context) -> str | None:
        with destination(ctx) as dest:
            found = [i for i in dest.find(origin(ctx)) if _is_ours(i, ctx)]
            for image in found:
                if image.get("status") in STALE:
                    ctx.log.warning("deleting leftover image %s (%s) on %s", image["id"], image["status"], ctx.site.id)
                    dest.delete(image["id"])
        active = [i for i in found if i.get("status") == "active"]
        if active:
            if len(active) > 1:
                ctx.log.warning("%d active copies on %s: %s", len(active), ctx.site.id,
                                ", ".join(i["id"] for i in active))
            ctx.result = {"dest_image_id": active[0]["id"], "already_present": True}
            ctx.finished = True
            return None
        blocked = [i for i in found if i.get("status") not in STALE | GOING]
        if blocked:
            image = blocked[0]
            raise PermanentError(f"image {image['id']} on {ctx.site.id} is a copy of {ctx.job.image_id} but is "
                                 f"{image.get('status')}: reactivate or delete it, then retry")
        return f"No copy on {ctx.site.id} yet"


class Transfer(Step):
    """rsync over ssh to the head node's staging dir (skipped for register via api)."""

    name = "transfer"

    def run(self, ctx: Context) -> str | None:
        options = ctx.site.options
        if options.register.via == "api":
            return None
        payload, remote_path = _payload(ctx), staged_path(ctx)
        _remote(ctx, ["mkdir", "-p", "--", options.staging_dir], "mkdir of the staging dir")
        ctx.on_exit(f"remove staged file {remote_path} on {options.host}",
                    lambda: _remote(ctx, ["rm", "-f", "--", remote_path], "rm of the staged file"))
        size = payload.stat().st_size
        argv = transfer.rsync_argv(payload, remote_path, options, ctx.site.limits.bandwidth_limit)
        start = ctx.clock()
        result = ctx.commands.run(argv, what="rsync", check=False,
                                  on_output=transfer.progress_callback(size, ctx.progress))
        if result.returncode != 0:
            raise transfer.failure(result.returncode, result.stderr_tail, options)
        ctx.progress(size, size)
        return f"Image transferred ({_mib(size)} in {ctx.clock() - start:.0f} s)"


class Register(Step):
    """Creates the destination image with the source's name, formats and user properties."""

    name = "register"

    def run(self, ctx: Context) -> str | None:
        image, payload = ctx.image, _payload(ctx)
        properties = dest_properties(ctx)
        created: list[str] = []
        ctx.on_failure(REGISTER_CLEANUP, lambda: _delete_created(ctx, created))
        fields = dict(name=image.name, disk_format=ctx.payload_format, container_format=image.container_format,
                      properties=properties, min_disk=image.min_disk, min_ram=image.min_ram)
        with destination(ctx) as dest:
            if isinstance(dest, RemoteGlance):
                image_id = dest.create_from_file(path=staged_path(ctx), created=created, **fields)
            else:
                image_id = dest.create(**fields)
                created.append(image_id)
                dest.upload(image_id, payload, progress=ctx.progress)
        ctx.result = {"dest_image_id": image_id, "already_present": False}
        return f"Image registered as {image_id}"


class Verify(Step):
    """The destination image must be active, with the size and hash of what was sent."""

    name = "verify"

    def run(self, ctx: Context) -> str | None:
        image_id = ctx.result.get("dest_image_id")
        if not image_id:
            raise RuntimeError("pipeline error: 'register' must run before 'verify'")
        with destination(ctx) as dest:
            record = _settled(ctx, dest, image_id)
            problem, checked = mismatch(record, ctx)
            if problem:
                dest.delete(image_id)
                ctx.forget_failure_action(REGISTER_CLEANUP)
                raise VerificationFailed(f"image {image_id} on {ctx.site.id} {problem}; it was deleted")
        ctx.forget_failure_action(REGISTER_CLEANUP)
        ctx.result["verified"] = checked
        algo = next((a for a in checked if a != "md5"), "md5")  # the strongest one Glance gave
        return f"Image verified ({algo} {checked[algo]})"


class BootCheck(Step):
    """Boots a server from the new image (flavor/network from the site conf), then deletes it."""

    name = "boot-check"

    def run(self, ctx: Context) -> str | None:
        options = ctx.site.options
        check = options.boot_check
        if check is None:
            raise ConfigError(f"{ctx.site.path}: pipeline has 'boot-check' but no 'boot_check' section")
        image_id = ctx.result["dest_image_id"]
        nova = ctx.services.nova(options.register.cloud)
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


@contextlib.contextmanager
def destination(ctx: Context) -> Iterator[Any]:
    """The destination Glance: migratio.glance.Glance (via api) or RemoteGlance (via ssh)."""
    options = ctx.site.options
    if options.register.via == "api":
        glance = ctx.services.glance(options.register.cloud)
        glance.site = ctx.site.id
        yield glance
        return
    shell = ctx.services.remote(options)
    try:
        yield RemoteGlance(shell, options, ctx.site.id)
    finally:
        shell.close()


def origin(ctx: Context) -> dict[str, str]:
    return {SOURCE_UUID: ctx.job.image_id, SOURCE_CS: ctx.config.name}


def dest_properties(ctx: Context) -> dict[str, str]:
    """The source's user properties (minus stale hash hints after a conversion) + our origin."""
    image = ctx.image
    converted = ctx.payload != image.path
    props = {k: v for k, v in image.properties.items()
             if not (converted and k.startswith(CONVERTED_ONLY_PREFIX))}
    props.update(origin(ctx))
    return props


def staged_path(ctx: Context) -> str:
    name = f"{ctx.job.image_id}-{ids.site_id(ctx.job.job_id)}.{ctx.payload_format}"
    return posixpath.join(ctx.site.options.staging_dir, name)


def mismatch(record: dict[str, Any], ctx: Context) -> tuple[str | None, dict[str, str]]:
    """(what is wrong or None, {algorithm: digest} that matched)."""
    if record.get("status") != "active":
        return f"is {record.get('status')}, not active", {}
    sent = os.path.getsize(_payload(ctx))
    if _int(record.get("size")) != sent:
        return f"has size {record.get('size')}, but {sent} bytes were sent", {}
    claims = {}
    if record.get("checksum"):
        claims["md5"] = str(record["checksum"])
    if record.get("os_hash_algo") and record.get("os_hash_value"):
        claims[str(record["os_hash_algo"])] = str(record["os_hash_value"])
    if not claims:
        return "reports no checksum to compare", {}
    missing = [a for a in claims if a not in ctx.payload_hash]
    if missing:
        ctx.payload_hash.update(hashes.file_hashes(_payload(ctx), missing))
    for algo, value in claims.items():
        if ctx.payload_hash[algo].lower() != value.lower():
            return f"has {algo} {value}, but what was sent has {ctx.payload_hash[algo]}", {}
    return None, claims


def _settled(ctx: Context, dest, image_id: str) -> dict[str, Any]:
    deadline = ctx.clock() + SETTLE_TIMEOUT
    while True:
        record = dest.show(image_id)
        if record.get("status") not in SETTLING or ctx.clock() > deadline:
            return record
        time.sleep(2)


def _is_ours(image: dict[str, Any], ctx: Context) -> bool:
    return all(str(image.get(k, "")) == v for k, v in origin(ctx).items())


def _delete_created(ctx: Context, created: list[str]) -> None:
    with destination(ctx) as dest:
        if created:
            for image_id in created:
                dest.delete(image_id)
            return
        for image in dest.find(origin(ctx)):  # the id never came back: find what this run left
            if _is_ours(image, ctx) and image.get("status") != "active":
                dest.delete(image["id"])


def _remote(ctx: Context, argv: list[str], what: str) -> str:
    shell = ctx.services.remote(ctx.site.options)
    try:
        return shell.check(argv, what=what)
    finally:
        shell.close()


def _payload(ctx: Context):
    if ctx.payload is None:
        raise RuntimeError("pipeline error: 'convert' must run before this step (it sets the payload)")
    return ctx.payload


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"

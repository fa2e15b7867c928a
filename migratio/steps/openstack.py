"""Steps for OpenStack destinations: dedupe, transfer, register, verify, boot-check.

The destination Glance is reached either through the head node's `glance` CLI over SSH
(`register: {via: ssh}`, the default: the image is streamed over ssh into `glance image-upload`
there, or rsync'ed to its staging dir first) or through its API from the worker
(`register: {via: api}`: uploaded straight from the file).
"""

import contextlib
import os
import posixpath
import shlex
import time
from typing import Any, Iterator

from migratio import origin as origins
from migratio.errors import ConfigError, PermanentError, UnsafeImage, VerificationFailed
from migratio.local import hashes, qemu
from migratio.openstack import headnode, rsync, stream
from migratio.openstack.headnode import RemoteGlance
from migratio.origin import SOURCE_UUID
from migratio.pipeline.runner import Context, Step
from migratio.units import whole_mib

STALE = frozenset({"queued", "saving", "killed", "uploading", "importing"})  # left by a crashed run
GOING = frozenset({"deleted", "pending_delete"})  # on their way out: ignored
SETTLING = frozenset({"saving", "uploading", "importing"})
SETTLE_TIMEOUT = 600.0
REGISTER_CLEANUP = "delete the half-registered destination image"
CONVERTED_ONLY_PREFIX = "owner_specified.openstack."  # hashes of the source bytes: stale after convert
PAYLOAD_MD5 = "owner_specified.openstack.md5"  # on converted copies: md5 of the bytes that were sent


class Dedupe(Step):
    """One filtered list call: an active copy with the right bytes ends the job as 'already present'.

    Glance filters on one property set per call, so the call asks for source_uuid only and a copy
    counts as ours when source_t or source_cs (older copies have only that) names this site.

    Non-active copies (queued/saving/killed, from a crashed earlier run) and active copies whose
    size or hash differ from what would be sent are deleted, so a migration never leaves two
    images (or a wrong one) for one source.
    """

    name = "dedupe"

    def run(self, ctx: Context) -> str | None:
        with destination(ctx) as dest:
            found = [i for i in dest.find(copies_filter(ctx)) if _is_ours(i, ctx)]
            for image in found:
                if image.get("status") in STALE:
                    ctx.log.warning("deleting leftover image %s (%s) on %s", image["id"], image["status"], ctx.site.id)
                    dest.delete(image["id"])
            active = [i for i in found if i.get("status") == "active" and _copy_is_right(i, ctx, dest)]
        if active:
            if len(active) > 1:
                ctx.log.warning("%d active copies on %s: %s", len(active), ctx.site.id,
                                ", ".join(i["id"] for i in active))
            ctx.result = {"dest_image_id": active[0]["id"], "already_present": True}
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
    also registers it; a staged copy is kept on the way for a retry to resume from. Without it,
    with `compress`, or when a partial staged copy of an earlier attempt exists: rsync to the
    staging dir (resumable, --partial), registered by the next step.
    """

    name = "transfer"

    def run(self, ctx: Context) -> str | None:
        options = ctx.site.options
        if options.register.via == "api":
            return None
        payload, remote_path = _payload(ctx), staged_path(ctx)
        remove = f"remove staged file {remote_path} on {options.host}"
        # kept when the job will be retried: rsync --partial resumes from what already arrived
        ctx.on_exit(remove, lambda: _remote(ctx, ["rm", "-f", "--", remote_path], "rm of the staged file"),
                    keep_for_retry=True)
        if options.stream and not options.compress:
            line = _stream(ctx, payload, remote_path)
            if line:
                ctx.forget_exit_action(remove)  # the head node removed it once Glance had the image
                return line
            ctx.log.info("a partial copy of an earlier attempt is staged: resuming it with rsync")
        else:
            _remote(ctx, ["mkdir", "-p", "--", options.staging_dir], "mkdir of the staging dir")
        size = payload.stat().st_size
        argv = rsync.rsync_argv(payload, remote_path, options, ctx.site.limits.bandwidth_limit)
        start = ctx.clock()
        result = ctx.commands.run(argv, what="rsync", check=False,
                                  on_output=rsync.progress_callback(size, ctx.progress))
        if result.returncode != 0:
            raise rsync.failure(result.returncode, result.stderr_tail, options)
        ctx.progress(size, size)
        return f"Image transferred ({whole_mib(size)} in {ctx.clock() - start:.0f} s)"


class Register(Step):
    """Creates the destination image with the source's name, formats and user properties."""

    name = "register"

    def run(self, ctx: Context) -> str | None:
        if ctx.result.get("dest_image_id"):  # streamed into Glance by the transfer step
            return f"Image registered as {ctx.result['dest_image_id']}"
        payload = _payload(ctx)
        created: list[str] = []
        ctx.on_failure(REGISTER_CLEANUP, lambda: _delete_created(ctx, created))
        fields = record_fields(ctx)
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


def record_fields(ctx: Context) -> dict[str, Any]:
    """The destination record: the source's name, formats, minimums and properties + our origin."""
    image, payload = ctx.image, _payload(ctx)
    properties = dest_properties(ctx)
    if payload != image.path:  # converted: a later dedupe checks the copy against this claim
        properties[PAYLOAD_MD5] = ctx.payload_hash.get("md5") or hashes.file_hashes(payload, ("md5",))["md5"]
    return dict(name=image.name, disk_format=ctx.payload_format, container_format=image.container_format,
                properties=properties, min_disk=image.min_disk, min_ram=image.min_ram)


def _stream(ctx: Context, payload, remote_path: str) -> str | None:
    """Pipe the payload over ssh into `glance image-upload` on the head node (see migratio.stream).

    None (nothing registered) when an earlier attempt left a partial staged copy to resume.
    """
    options, size = ctx.site.options, payload.stat().st_size
    line = stream.remote_line(_head_glance(ctx, record_fields(ctx), size), remote_path, size,
                              options.remote_env_file)
    limit = ctx.site.limits.bandwidth_limit
    start = ctx.clock()

    def progress(done: int) -> None:
        elapsed = ctx.clock() - start
        ctx.progress(done, size, done / elapsed if elapsed > 0 else None)

    result = ctx.commands.run(stream.ssh_argv(options, line), what="ssh stream", check=False,
                              feed=stream.feeder(payload, limit * 1024 if limit else None, progress))
    if result.returncode == stream.PARTIAL_STAGED:
        return None
    image_id = stream.created_id(result.stdout)
    created = [image_id] if image_id else []
    ctx.on_failure(REGISTER_CLEANUP, lambda: _delete_created(ctx, created))
    error = stream.outcome(result.returncode, result.stdout, result.stderr_tail, options, ctx.site.id)
    if error:
        raise error
    if not image_id:
        raise PermanentError(f"remote glance image-create on {ctx.site.id}: no image id in its output")
    ctx.result = {"dest_image_id": image_id, "already_present": False}
    took = ctx.clock() - start
    return f"Image transferred ({whole_mib(size)} in {took:.0f} s, streamed into Glance on {ctx.site.id})"


def _head_glance(ctx: Context, fields: dict[str, Any], size: int) -> stream.HeadGlance:
    """migratio's Glance client on the head node when it runs there, else the glance CLI."""
    options = ctx.site.options
    with destination(ctx) as dest:
        client = dest.install_client(options.staging_dir)
    if client:
        return stream.client_commands(shlex.split(options.remote_python), client, fields, size)
    return stream.cli_commands(shlex.split(options.glance_command), headnode.create_args(**fields), size)


def origin(ctx: Context) -> dict[str, str]:
    return origins.origin(ctx.job.image_id, ctx.config.name)


def copies_filter(ctx: Context) -> dict[str, str]:
    """The destination list filter for copies of this image (the site key is checked by _is_ours)."""
    return {SOURCE_UUID: ctx.job.image_id}


def dest_properties(ctx: Context) -> dict[str, str]:
    """The source's user properties (minus stale hash hints after a conversion) + our origin.

    The origin keys always get our values: a source that is itself a copy (with source_t,
    source_uuid, source_cs of another site) never passes them on."""
    image = ctx.image
    converted = ctx.payload != image.path
    props = {k: v for k, v in image.properties.items()
             if not (converted and k.startswith(CONVERTED_ONLY_PREFIX))}
    props.update(origin(ctx))
    return props


def staged_path(ctx: Context) -> str:
    """One name per (image, source site, format) in the destination's staging dir: a retried or
    repeated job finds the partial file an interrupted rsync left and resumes from it (the
    per (image, destination) lock keeps two jobs from writing it at once)."""
    name = f"{ctx.job.image_id}-{ctx.config.name}.{ctx.payload_format}"
    return posixpath.join(ctx.site.options.staging_dir, name)


def _copy_is_right(record: dict[str, Any], ctx: Context, dest) -> bool:
    """An active copy counts as 'already present' only with the size and hash of what would be
    sent; a copy proven wrong is deleted, one that cannot be checked needs the operator."""
    problem, checkable = copy_problem(record, ctx)
    if problem is None:
        return True
    if not checkable:
        raise PermanentError(f"image {record['id']} on {ctx.site.id} is an active copy of {ctx.job.image_id} "
                             f"but {problem}: delete it to migrate the image again")
    ctx.log.warning("deleting image %s on %s: it %s", record["id"], ctx.site.id, problem)
    dest.delete(record["id"])
    return False


def copy_problem(record: dict[str, Any], ctx: Context) -> tuple[str | None, bool]:
    """(what is wrong with an active copy or None, whether that was proven from its hashes)."""
    image = ctx.image
    target = getattr(ctx.site.options, "disk_format", None) or image.disk_format
    if record.get("disk_format") != target:
        return f"has disk format {record.get('disk_format')}, not {target}", False
    if not _same_bytes(image.disk_format, target):  # a conversion: its md5 was claimed at register
        claim, stored = record.get(PAYLOAD_MD5), record.get("checksum")
        if not claim or not stored:
            return "its data cannot be checked (no md5 claim of the converted bytes)", False
        return (None if claim.lower() == str(stored).lower() else f"has md5 {stored}, not the {claim} sent"), True
    if _int(record.get("size")) != image.size:
        return f"has size {record.get('size')}, not {image.size}", True
    claims = {"md5": record.get("checksum")}
    if record.get("os_hash_algo"):
        claims[str(record["os_hash_algo"])] = record.get("os_hash_value")
    known = {"md5": image.checksum, image.os_hash_algo: image.os_hash_value}
    compared = [(algo, str(value).lower(), str(known[algo]).lower())
                for algo, value in claims.items() if value and known.get(algo)]
    if not compared:
        return "reports no hash to compare with the source's", False
    for algo, theirs, ours in compared:
        if theirs != ours:
            return f"has {algo} {theirs}, not the source's {ours}", True
    return None, True


def _same_bytes(source_format: str, target: str) -> bool:
    if target == source_format:
        return True
    try:
        return qemu.qemu_format(target) == qemu.qemu_format(source_format)
    except UnsafeImage:
        return False


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
    return origins.is_copy(image, ctx.job.image_id, ctx.config.name)


def _delete_created(ctx: Context, created: list[str]) -> None:
    with destination(ctx) as dest:
        if created:
            for image_id in created:
                dest.delete(image_id)
            return
        for image in dest.find(copies_filter(ctx)):  # the id never came back: find what this run left
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



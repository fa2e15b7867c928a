"""Whether an image on the destination holds the right bytes: an active copy found by dedupe
(against the source image) and the registered copy verify checks (against what was sent)."""

import os

from migratio.errors import PermanentError, UnsafeImage
from migratio.local import hashes, qemu
from migratio.openstack.glance_protocol import Glance, ImageRecord
from migratio.pipeline.context import Context

PAYLOAD_MD5 = "owner_specified.openstack.md5"  # on converted copies: md5 of the bytes that were sent


def copy_is_right(record: ImageRecord, ctx: Context, dest: Glance) -> bool:
    """An active copy counts as 'already present' only with the size and hash of what would be
    sent; a copy proven wrong is deleted, one that cannot be checked needs the operator."""
    problem, checkable = copy_problem(record, ctx)
    if problem is None:
        return True
    if not checkable:
        raise PermanentError(f"image {record['id']} on {ctx.site.id} is an active copy of {ctx.job.image_id} "
                             f"but {problem}: delete it to migrate the image again")
    ctx.log.warning("deleting image %s on %s: it %s", record["id"], ctx.site.id, problem)
    dest.delete(str(record["id"]))
    return False


def copy_problem(record: ImageRecord, ctx: Context) -> tuple[str | None, bool]:
    """(what is wrong with an active copy or None, whether that was proven from its hashes)."""
    image = ctx.require_image()
    target = ctx.site.openstack.disk_format or image.disk_format
    if record.get("disk_format") != target:
        return f"has disk format {record.get('disk_format')}, not {target}", False
    if not _same_bytes(image.disk_format, target):  # a conversion: its md5 was claimed at register
        claim, stored = record.get(PAYLOAD_MD5), record.get("checksum")
        if not claim or not stored:
            return "its data cannot be checked (no md5 claim of the converted bytes)", False
        return (None if str(claim).lower() == str(stored).lower() else f"has md5 {stored}, not the {claim} sent"), True
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


def mismatch(record: ImageRecord, ctx: Context) -> tuple[str | None, dict[str, str]]:
    """(what is wrong or None, {algorithm: digest} that matched)."""
    if record.get("status") != "active":
        return f"is {record.get('status')}, not active", {}
    sent = os.path.getsize(ctx.require_payload())
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
        ctx.payload_hash.update(hashes.file_hashes(ctx.require_payload(), missing))
    for algo, value in claims.items():
        if ctx.payload_hash[algo].lower() != value.lower():
            return f"has {algo} {value}, but what was sent has {ctx.payload_hash[algo]}", {}
    return None, claims


def _same_bytes(source_format: str, target: str) -> bool:
    if target == source_format:
        return True
    try:
        return qemu.qemu_format(target) == qemu.qemu_format(source_format)
    except UnsafeImage:
        return False


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None

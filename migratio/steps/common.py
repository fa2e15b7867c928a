"""Steps every site type shares: locate and inspect the source image, convert, clean up."""

import os
import shutil
from pathlib import Path

from migratio.errors import ImageNotFound, NotEnoughSpace
from migratio.local import hashes, qemu
from migratio.openstack.glance import GlanceClient, SourceImage
from migratio.pipeline.context import Context, Fact
from migratio.pipeline.runner import Step
from migratio.units import MiB, whole_mib

SPACE_MARGIN = 64 * MiB  # kept free in work_dir on top of what a file needs


class Locate(Step):
    """Looks the image up in this site's Glance and finds (or downloads) its data."""

    name = "locate"
    provides = frozenset({Fact.IMAGE})

    def run(self, ctx: Context) -> str | None:
        glance = ctx.services.source_glance()
        glance.site = ctx.config.name
        try:
            image = glance.get(ctx.job.image_id)
        except ImageNotFound:
            raise ImageNotFound(f"image {ctx.job.image_id} not found on {ctx.config.name}") from None
        ctx.image = image
        ctx.payload_hash = source_hashes(image)
        store_file = ctx.config.images_dir / image.id
        if _usable(store_file, image, ctx):
            image.path = store_file
            return f"Image located ({whole_mib(image.size)}, {image.disk_format})"
        image.path = _download(ctx, glance, image)
        return f"Image downloaded from Glance ({whole_mib(image.size)}, {image.disk_format})"


class Inspect(Step):
    """qemu-img info: refuses content that is not its disk_format, backing files, external data files,
    multi-file VMDKs and virtual sizes over max_virtual_size."""

    name = "inspect"
    needs = frozenset({Fact.IMAGE})
    provides = frozenset({Fact.INSPECTED})

    def run(self, ctx: Context) -> str | None:
        image = ctx.require_image()
        data = qemu.info(ctx.commands, image.path, image.disk_format, image.id)
        image.virtual_size = qemu.check_safe(data, image.path, ctx.config.max_virtual_size, image.id)
        return f"Image inspected ({image.disk_format}, virtual size {whole_mib(image.virtual_size)})"


class Convert(Step):
    """Converts to the destination's disk format when it asks for another one."""

    name = "convert"
    needs = frozenset({Fact.IMAGE, Fact.INSPECTED})
    provides = frozenset({Fact.PAYLOAD})

    def target_format(self, ctx: Context) -> str | None:
        """The disk format an OpenStack destination wants (None: keep the source's); AWS's Convert overrides this."""
        return ctx.site.openstack.disk_format

    def run(self, ctx: Context) -> str | None:
        image = ctx.require_image()
        target = self.target_format(ctx)
        ctx.payload, ctx.payload_format = image.path, image.disk_format
        if not target or target == image.disk_format:
            return None
        if qemu.qemu_format(target) == qemu.qemu_format(image.disk_format):
            ctx.payload_format = target  # same bytes, another label (e.g. iso -> raw)
            return None
        if image.virtual_size is None:
            Inspect().run(ctx)  # never convert an image that was not checked
        dest = ctx.workdir / f"{image.id}.{target}"
        needed = qemu.required_bytes(ctx.commands, image.path, image.disk_format, target)
        ensure_space(ctx.workdir, needed, f"converting image {image.id} to {target}")
        ctx.on_exit(f"remove {dest}", lambda: dest.unlink(missing_ok=True))
        start = ctx.clock()
        total = image.virtual_size or image.size
        qemu.convert(ctx.commands, image.path, image.disk_format, dest, target,
                     progress=lambda fraction: ctx.progress(int(fraction * total), total))
        ctx.payload, ctx.payload_format = dest, target
        ctx.payload_hash = hashes.file_hashes(dest, ("md5", "sha512"))
        took = ctx.clock() - start
        return f"Image converted to {target} ({whole_mib(os.path.getsize(dest))} in {took:.0f} s)"


class Cleanup(Step):
    """Removes temp and staged files now (they are removed on failure paths by the runner too)."""

    name = "cleanup"
    always = True

    def run(self, ctx: Context) -> str | None:
        ctx.run_cleanups(failed=False)
        return "Cleanup done"


def source_hashes(image: SourceImage) -> dict[str, str]:
    """What Glance says the image's data hashes to (reused when the bytes are sent unchanged)."""
    known = {}
    if image.checksum:
        known["md5"] = image.checksum
    if image.os_hash_algo and image.os_hash_value:
        known[image.os_hash_algo] = image.os_hash_value
    return known


def ensure_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + SPACE_MARGIN:
        raise NotEnoughSpace(f"not enough space in {directory} for {what}: need {whole_mib(needed + SPACE_MARGIN)}, "
                             f"{whole_mib(free)} free")


def _usable(path: Path, image: SourceImage, ctx: Context) -> bool:
    try:
        ok = path.is_file() and os.access(path, os.R_OK) and path.stat().st_size == image.size
    except OSError:
        return False
    if path.exists() and not ok:
        ctx.log.warning("%s is not readable or its size differs from Glance's: downloading instead", path)
    return ok


def _download(ctx: Context, glance: GlanceClient, image: SourceImage) -> Path:
    ensure_space(ctx.workdir, image.size, f"downloading image {image.id}")
    dest = ctx.workdir / f"{image.id}.{image.disk_format or 'img'}.download"
    ctx.on_exit(f"remove {dest}", lambda: dest.unlink(missing_ok=True))
    glance.download(image.id, dest, progress=lambda done, total: ctx.progress(done, total or image.size))
    return dest

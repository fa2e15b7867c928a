"""Which images at an OpenStack destination are this site's copies of the job's image.

A copy carries our origin (`source_uuid` = the image, `source_t` or `source_cs` = this site) and
belongs to the project migratio registers into (Glance's `owner`). Anyone can set properties:
an image of another project that carries them (public, shared, or seen with admin
credentials) is not ours, so it is logged and ignored, never taken as present nor deleted.
"""

from migratio import origin as origins
from migratio.openstack.glance_protocol import Glance, ImageRecord
from migratio.origin import SOURCE_UUID
from migratio.pipeline.context import Context


def copies_filter(ctx: Context) -> dict[str, str]:
    """The destination list filter for copies of this image (the site key is checked by copies())."""
    return {SOURCE_UUID: ctx.job.image_id}


def copies(ctx: Context, dest: Glance) -> list[ImageRecord]:
    """Our copies of the image at the destination, whatever their status (one list call, and the
    project asked only when there is a candidate)."""
    candidates = [i for i in dest.find(copies_filter(ctx)) if origins.is_copy(i, ctx.job.image_id, ctx.config.name)]
    if not candidates:
        return []
    project = dest.project()
    owned = []
    for image in candidates:
        if str(image.get("owner") or "") == project:
            owned.append(image)
        else:
            ctx.log.warning("ignoring image %s on %s: it carries the origin of a copy of %s but belongs to "
                            "project %s, not %s (the one migratio registers into)", image.get("id"), ctx.site.id,
                            ctx.job.image_id, image.get("owner"), project)
    return owned

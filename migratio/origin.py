"""Where a copy came from: the metadata every copy carries (Glance properties, AMI tags).

Atmosphere (`vmt_updater.rb#source_t_and_uuid`) links a copy to its template's appliance type
by `source_t` (the source site = config `name`) + `source_uuid` (the source image id);
`source_cs` is `source_t`'s pre-2015 name, still written for older Atmospheres. A copy counts
as ours when `source_uuid` is the image id and either site key names this site (copies made by
the old tool or by older migratio versions carry only `source_cs`).
"""

from typing import Mapping

SOURCE_T, SOURCE_UUID, SOURCE_CS = "source_t", "source_uuid", "source_cs"
SITE_KEYS = (SOURCE_T, SOURCE_CS)


def origin(image_id: str, site: str) -> dict[str, str]:
    """What every copy we make carries (whatever the source image held under these keys)."""
    return {SOURCE_T: site, SOURCE_UUID: image_id, SOURCE_CS: site}


def is_copy(metadata: Mapping[str, object], image_id: str, site: str) -> bool:
    """A copy of this image from this site, made by us or by an older migratio / the old tool."""
    return (str(metadata.get(SOURCE_UUID, "")) == image_id
            and any(str(metadata.get(key, "")) == site for key in SITE_KEYS))

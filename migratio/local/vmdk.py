"""VMDK: only the single-file subformats, monolithicSparse and streamOptimized, are migrated.

The other subformats are a text descriptor naming other files as extents: qemu opens those files
as soon as it opens the image, and a destination would resolve the names against its own files.
So a descriptor is refused before qemu-img ever opens the file (`layout`), and what qemu-img info
then reports of a sparse VMDK is checked too (`check_info`).
"""

import struct
from pathlib import Path
from typing import Any, Literal

from migratio.errors import UnsafeImage

SINGLE_FILE = ("monolithicSparse", "streamOptimized")
HEAD = 2048  # bytes qemu reads to probe a format
SPARSE_MAGICS = (b"KDMV", b"COWD")  # VMDK4 / VMDK3 sparse extent headers
ONLY = f"only {' and '.join(SINGLE_FILE)} VMDKs (one file each) are migrated"

Layout = Literal["sparse", "descriptor", "other"]


def layout(path: Path) -> Layout:
    """How qemu's vmdk driver would open the file: a sparse extent (the file itself), a descriptor
    (opens the extent files it names), or not a VMDK at all as far as its probe goes."""
    with open(path, "rb") as f:
        head = f.read(HEAD)
    if head[:4] == b"KDMV" and len(head) >= 36:
        capacity, = struct.unpack_from("<Q", head, 12)
        desc_offset, = struct.unpack_from("<Q", head, 28)
        return "descriptor" if capacity == 0 and desc_offset else "sparse"  # qemu: "no capacity: read the descriptor"
    if head[:4] in SPARSE_MAGICS:
        return "sparse"
    return "descriptor" if _descriptor_text(head) else "other"


def not_single_file(image: str) -> UnsafeImage:
    """The refusal of a file declared vmdk that qemu would open as a descriptor (naming other files)."""
    return UnsafeImage(f"image {image}: VMDK without a sparse extent header (a descriptor, whose data is in "
                       f"other files): refused, {ONLY}")


def check_info(data: dict[str, Any], path: Path, image: str) -> None:
    """qemu-img info of a VMDK: a single-file subformat whose one extent is the image file itself."""
    specific = (data.get("format-specific") or {}).get("data") or {}
    kind = specific.get("create-type")
    if kind not in SINGLE_FILE:
        raise UnsafeImage(f"image {image}: VMDK subformat {kind or 'unknown'} keeps its data in other files: "
                          f"refused, {ONLY}")
    extents = specific.get("extents") or []
    names = [e.get("filename") for e in extents]
    if len(names) != 1 or not names[0] or Path(names[0]).resolve() != path.resolve():  # (as qemu was given it)
        raise UnsafeImage(f"image {image}: VMDK refers to another file as an extent ({names!r}): refused, {ONLY}")


def _descriptor_text(head: bytes) -> bool:
    """Text that qemu would read as a VMDK descriptor: comment or blank lines, then `version=`."""
    for line in head.split(b"\n"):
        text = line.strip()
        if text and not text.startswith(b"#"):
            return text.startswith(b"version=")
    return False

"""qemu-img wrappers: info (with safety checks), map/measure (space needed) and convert.

All run through migratio.commands (argv lists). `info` and `map` run under prlimit (CPU time and
address space caps, as OpenStack does) because they parse untrusted image headers; their output
is read in bounded memory whatever the image holds.
"""

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from migratio.conf.config import DEFAULT_MAX_VIRTUAL_SIZE
from migratio.errors import CommandFailed, PermanentError, UnsafeImage
from migratio.local import vmdk
from migratio.local.commands import Commands
from migratio.local.json_stream import ArrayReader
from migratio.units import format_size

INFO_LIMITS = ("--cpu=30", f"--as={1024 ** 3}")
MAX_INFO_OUTPUT = 1024 * 1024  # characters of `qemu-img info` JSON; a real image needs a few hundred
COROUTINES = 8
# Glance disk_format -> qemu's format name; formats qemu would otherwise have to guess.
QEMU_FORMATS = {
    "raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi", "vhd": "vpc", "vhdx": "vhdx",
    "iso": "raw", "ami": "raw", "ari": "raw", "aki": "raw", "ploop": "parallels",
}
GLANCE_NAMES = {"vpc": "vhd", "parallels": "ploop"}  # qemu's name -> Glance's, where they differ
PROGRESS_RE = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def qemu_format(disk_format: str) -> str:
    try:
        return QEMU_FORMATS[disk_format]
    except KeyError:
        raise UnsafeImage(f"disk format '{disk_format}' is not supported "
                          f"(supported: {', '.join(sorted(QEMU_FORMATS))})") from None


def info(commands: Commands, path: Path, disk_format: str, image: str | None = None) -> dict[str, Any]:
    """`qemu-img info --output=json -f FMT path` as a dict; FMT from the Glance disk format.

    The content must be that format: qemu's own probe (what a destination that guesses formats
    sees) must find it too, or find raw (formats qemu cannot probe, e.g. a fixed VHD, are then
    read as declared). A VMDK descriptor is refused before qemu opens it (it opens other files).
    """
    image = image or path.name
    declared = qemu_format(disk_format)
    if vmdk.layout(path) == "descriptor":
        raise UnsafeImage(_mismatch(image, "vmdk", disk_format)) if declared != "vmdk" else vmdk.not_single_file(image)
    probed = _info(commands, ["qemu-img", "info", "--output=json", str(path)], path, disk_format)
    found = probed.get("format")
    if found == declared:
        return probed
    if found != "raw":
        raise UnsafeImage(_mismatch(image, GLANCE_NAMES.get(found, found), disk_format))
    if declared == "vmdk":  # no sparse header: qemu would read the file as a descriptor
        raise vmdk.not_single_file(image)
    return _info(commands, ["qemu-img", "info", "--output=json", "-f", declared, str(path)], path, disk_format)


def check_safe(data: dict[str, Any], path: Path, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
               image: str | None = None) -> int:
    """Refuse backing files, external data files, multi-file VMDKs and virtual sizes over
    max_virtual_size; returns the virtual size."""
    image = image or path.name
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise UnsafeImage(f"image has a backing file ({data.get('backing-filename')!r}): refused, "
                          "only self-contained images are migrated")
    specific = (data.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise UnsafeImage(f"image has an external data file ({specific['data-file']!r}): refused")
    if data.get("format") == "vmdk":
        vmdk.check_info(data, path, image)
    size = data.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise UnsafeImage("qemu-img reports no virtual size for the image")
    if size > max_virtual_size:
        raise UnsafeImage(f"virtual size {size} bytes exceeds the limit of {format_size(max_virtual_size)} "
                          f"(max_virtual_size in config.yml): image {image} ({format_size(size)}) refused")
    return size


def allocated_bytes(commands: Commands, path: Path, disk_format: str) -> int:
    """Bytes holding data (not holes or zeros), from `qemu-img map --output=json` read as it streams."""
    argv = ["qemu-img", "map", "--output=json", "-f", qemu_format(disk_format), str(path)]
    total = 0

    def add(extent: dict[str, Any]) -> None:
        nonlocal total
        if extent.get("data") and not extent.get("zero"):
            total += int(extent.get("length") or 0)

    reader = ArrayReader(add)
    try:
        commands.run(_limited(argv), what="qemu-img map", timeout=600, on_output=reader.line)
        reader.close()
    except CommandFailed as exc:
        limits = " ".join(INFO_LIMITS)
        raise UnsafeImage(f"{path.name}: qemu-img map failed: {_reason(exc)} (limits: {limits})") from None
    except (ValueError, TypeError) as exc:
        raise UnsafeImage(f"{path.name}: qemu-img map printed no list of extents: {exc}") from None
    return total


def required_bytes(commands: Commands, path: Path, disk_format: str, out_format: str) -> int:
    """Space a conversion to out_format needs: allocated data for (sparse) raw, else `measure`.

    Formats `measure` does not know (e.g. vmdk) get the allocated data plus 1/16 for metadata.
    """
    allocated = allocated_bytes(commands, path, disk_format)
    if qemu_format(out_format) == "raw":
        return allocated
    argv = ["qemu-img", "measure", "--output=json", "-f", qemu_format(disk_format),
            "-O", qemu_format(out_format), str(path)]
    result = commands.run(argv, what="qemu-img measure", timeout=600, check=False)
    if result.returncode != 0:
        return allocated + allocated // 16
    return int(json.loads(result.stdout)["required"])


def convert_argv(src: Path, src_format: str, dest: Path, dest_format: str,
                 coroutines: int = COROUTINES, out_of_order: bool = True) -> list[str]:
    """qemu-img convert with progress, parallel coroutines and (-W) out-of-order writes.

    The output stays sparse (qemu-img's default -S 4k skips zero runs).
    """
    argv = ["qemu-img", "convert", "-p", "-f", qemu_format(src_format), "-O", qemu_format(dest_format),
            "-m", str(coroutines)]
    if out_of_order:
        argv.append("-W")
    return argv + [str(src), str(dest)]


def convert(commands: Commands, src: Path, src_format: str, dest: Path, dest_format: str,
            progress: Callable[[float], None] | None = None, timeout: float | None = None) -> None:
    """Convert src to dest; `progress` gets the fraction done (0..1)."""

    def on_line(line: str) -> None:
        match = PROGRESS_RE.search(line)
        if match and progress:
            progress(float(match.group(1)) / 100)

    try:
        commands.run(convert_argv(src, src_format, dest, dest_format), what="qemu-img convert",
                     on_output=on_line, timeout=timeout)
    except CommandFailed as exc:
        dest.unlink(missing_ok=True)
        raise PermanentError(f"qemu-img convert of {src.name} to {dest_format} failed: {_reason(exc)}") from None


def _info(commands: Commands, argv: list[str], path: Path, disk_format: str) -> dict[str, Any]:
    kept: list[str] = []
    size = 0

    def keep(line: str) -> None:
        nonlocal size
        size += len(line) + 1
        if size > MAX_INFO_OUTPUT:
            raise UnsafeImage(f"{path.name}: qemu-img info printed over {MAX_INFO_OUTPUT} characters: refused")
        kept.append(line)

    try:
        commands.run(_limited(argv), what="qemu-img info", timeout=120, on_output=keep)
        data = json.loads("\n".join(kept))
    except CommandFailed as exc:
        raise UnsafeImage(f"{path.name} is not a readable {disk_format} image: {_reason(exc)}") from None
    except ValueError:
        raise UnsafeImage(f"{path.name}: qemu-img info printed no JSON") from None
    if not isinstance(data, dict):
        raise UnsafeImage(f"{path.name}: qemu-img info printed no JSON object")
    return data


def _mismatch(image: str, found: str, disk_format: str) -> str:
    return (f"image {image}: its content is {found} but its Glance disk_format is {disk_format}: refused "
            f"(a destination that probes formats would read it as {found})")


def _limited(argv: list[str]) -> list[str]:
    prlimit = shutil.which("prlimit")
    return [prlimit, *INFO_LIMITS, "--", *argv] if prlimit else argv


def _reason(exc: CommandFailed) -> str:
    lines = [ln.strip() for ln in exc.stderr_tail.splitlines() if ln.strip()]
    return lines[-1].removeprefix("qemu-img: ") if lines else str(exc)

"""qemu-img wrappers: info (with safety checks), map/measure (space needed) and convert.

All run through migratio.commands (argv lists). `info` runs under prlimit (CPU time and
address space caps, as OpenStack does) because it parses untrusted image headers.
"""

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from migratio.errors import CommandFailed, PermanentError, UnsafeImage
from migratio.local.commands import Commands

TiB = 1024 ** 4
MAX_VIRTUAL_SIZE = 16 * TiB
INFO_LIMITS = ("--cpu=30", f"--as={1024 ** 3}")
COROUTINES = 8
# Glance disk_format -> qemu's format name; formats qemu would otherwise have to guess.
QEMU_FORMATS = {
    "raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi", "vhd": "vpc", "vhdx": "vhdx",
    "iso": "raw", "ami": "raw", "ari": "raw", "aki": "raw", "ploop": "parallels",
}
PROGRESS_RE = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def qemu_format(disk_format: str) -> str:
    try:
        return QEMU_FORMATS[disk_format]
    except KeyError:
        raise UnsafeImage(f"disk format '{disk_format}' is not supported "
                          f"(supported: {', '.join(sorted(QEMU_FORMATS))})") from None


def info(commands: Commands, path: Path, disk_format: str) -> dict[str, Any]:
    """`qemu-img info --output=json -f FMT path` as a dict; FMT from the Glance disk format."""
    argv = ["qemu-img", "info", "--output=json", "-f", qemu_format(disk_format), str(path)]
    try:
        result = commands.run(_limited(argv), what="qemu-img info", timeout=120)
    except CommandFailed as exc:
        raise UnsafeImage(f"{path.name} is not a readable {disk_format} image: {_reason(exc)}") from None
    return json.loads(result.stdout)


def check_safe(data: dict[str, Any], path: Path, max_virtual_size: int = MAX_VIRTUAL_SIZE) -> int:
    """Refuse backing files, external data files and foreign extents; returns the virtual size."""
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise UnsafeImage(f"image has a backing file ({data.get('backing-filename')!r}): refused, "
                          "only self-contained images are migrated")
    specific = (data.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise UnsafeImage(f"image has an external data file ({specific['data-file']!r}): refused")
    for extent in specific.get("extents") or []:
        name = extent.get("filename")
        if name and Path(name).name != path.name:
            raise UnsafeImage(f"image refers to another file ({name!r}) as an extent: refused")
    size = data.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise UnsafeImage("qemu-img reports no virtual size for the image")
    if size > max_virtual_size:
        raise UnsafeImage(f"virtual size {size} bytes exceeds the limit of {max_virtual_size} bytes")
    return size


def allocated_bytes(commands: Commands, path: Path, disk_format: str) -> int:
    """Bytes holding data (not holes or zeros), from `qemu-img map --output=json`."""
    argv = ["qemu-img", "map", "--output=json", "-f", qemu_format(disk_format), str(path)]
    extents = json.loads(commands.run(argv, what="qemu-img map", timeout=600).stdout or "[]")
    return sum(e["length"] for e in extents if e.get("data") and not e.get("zero"))


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


def _limited(argv: list[str]) -> list[str]:
    prlimit = shutil.which("prlimit")
    return [prlimit, *INFO_LIMITS, "--", *argv] if prlimit else argv


def _reason(exc: CommandFailed) -> str:
    lines = [ln.strip() for ln in exc.stderr_tail.splitlines() if ln.strip()]
    return lines[-1].removeprefix("qemu-img: ") if lines else str(exc)

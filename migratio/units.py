"""Byte counts: the units, and sizes for humans (in status lines and on the command line)."""

import re

from migratio.errors import InvalidInput

KiB, MiB, GiB, TiB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4
SIZE_RE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*")


def format_size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def whole_mib(n: int | None) -> str:
    """Rounded for a status line: '24 MiB', '512 bytes', '?' when unknown."""
    return "?" if n is None else f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


def parse_size(text: str) -> int:
    """'10G', '500M', '1.5T', '4096' (bytes) -> bytes; powers of 1024."""
    m = SIZE_RE.fullmatch(text or "")
    if not m:
        raise InvalidInput(f"invalid size {text!r}: use e.g. 500M, 10G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))

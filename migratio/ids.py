"""Validation of identifiers that come from jobs and operators.

Both checks run before any path, command or request is built from the value.
"""

import re

from migratio.errors import InvalidInput

SITE_ID_RE = re.compile(r"[A-Za-z0-9_.-]+")
# Atmosphere's site ids are Keystone project ids or names (at most 64 characters in Keystone); 64
# also keeps every name built from one (`<site>.conf`, `<image uuid>-<site>.<format>` in a staging
# dir, Redis keys) far below the 255 bytes a file name may have.
SITE_ID_MAX = 64
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def image_id(value: object) -> str:
    """Return the canonical lower-case form of a Glance image UUID, or raise InvalidInput."""
    if not isinstance(value, str) or not UUID_RE.fullmatch(value):
        raise InvalidInput(f"invalid image id {_show(value)}: expected a UUID")
    return value.lower()


def site_id(value: object) -> str:
    """Return the site id if it matches [A-Za-z0-9_.-]+, is at most SITE_ID_MAX long and is not '.' or '..'."""
    if not isinstance(value, str) or not SITE_ID_RE.fullmatch(value) or set(value) == {"."}:
        raise InvalidInput(
            f"invalid site id {_show(value)}: only letters, digits, '_', '.' and '-' are allowed"
        )
    if len(value) > SITE_ID_MAX:
        raise InvalidInput(f"invalid site id {_show(value)}: at most {SITE_ID_MAX} characters")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

"""The old Ruby tool's site files: shell lines `export NAME=value`.

Mapping (documented in README "Site confs"):

    EXTERNAL_HOST  -> host          (type: openstack)
    EXTERNAL_USER  -> user
    EXTERNAL_PORT  -> port
    EXTERNAL_KEY   -> key_file
    AWS_REGION     -> region        (type: aws)
    EC2_URL        -> endpoint_url
    S3_BUCKET      -> bucket
"""

import logging
import re
import shlex
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

LINE_RE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")
OPENSTACK = {"EXTERNAL_HOST": "host", "EXTERNAL_USER": "user", "EXTERNAL_PORT": "port", "EXTERNAL_KEY": "key_file"}
AWS = {"AWS_REGION": "region", "EC2_URL": "endpoint_url", "S3_BUCKET": "bucket"}
INTEGERS = {"port"}


def looks_legacy(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return bool(lines) and all(LINE_RE.fullmatch(ln) for ln in lines)


def parse(text: str, path: Path) -> dict:
    variables = _variables(text, path)
    if OPENSTACK.keys() & variables.keys():
        data = {"type": "openstack", **_mapped(variables, OPENSTACK, path)}
    elif AWS.keys() & variables.keys():
        data = {"type": "aws", **_mapped(variables, AWS, path)}
    else:
        raise ConfigError(f"{path}: legacy conf sets neither EXTERNAL_HOST/EXTERNAL_USER nor AWS_REGION")
    return data


def _variables(text: str, path: Path) -> dict[str, str]:
    result = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = LINE_RE.fullmatch(line)
        if not match:
            continue
        try:
            words = shlex.split(match.group(2), comments=True)
        except ValueError:
            raise ConfigError(f"{path}: line {number}: unbalanced quotes") from None
        result[match.group(1)] = " ".join(words)
    return result


def _mapped(variables: dict[str, str], mapping: dict[str, str], path: Path) -> dict:
    data = {}
    for name, value in variables.items():
        key = mapping.get(name)
        if key is None:
            log.warning("%s: legacy variable %s is not used by migratio", path, name)
        elif key in INTEGERS:
            if not value.isdigit():
                raise ConfigError(f"{path}: {name} must be a number, got {value!r}")
            data[key] = int(value)
        else:
            data[key] = value
    return data

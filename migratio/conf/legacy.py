"""The old Ruby tool's site files: shell lines `export NAME=value`.

Mapping (documented in README "Site confs"):

    EXTERNAL_HOST  -> host          (type: openstack)
    EXTERNAL_USER  -> user
    EXTERNAL_PORT  -> port
    EXTERNAL_KEY   -> key_file
    AWS_REGION     -> region        (type: aws)
    EC2_URL        -> endpoint_url
    S3_BUCKET      -> bucket

An openstack conf also gets `remote_env_file: ~/.creds`: the old tool ran `. ~/.creds` on the
head node before every glance command (the format has no variable for another file).
The old AWS_ACCESS_KEY / AWS_SECRET_KEY are not taken from a site conf (a warning names them,
never their values): boto3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile.
"""

import logging
import re
import shlex
from pathlib import Path

from migratio.errors import ConfigError

log = logging.getLogger(__name__)

LINE_RE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")
OPENSTACK = {"EXTERNAL_HOST": "host", "EXTERNAL_USER": "user", "EXTERNAL_PORT": "port", "EXTERNAL_KEY": "key_file"}
AWS = {"AWS_REGION": "region", "EC2_URL": "endpoint_url", "S3_BUCKET": "bucket"}
INTEGERS = {"port"}
LEGACY_ENV_FILE = "~/.creds"  # sourced by the old tool on the head node; "~/" is the remote user's home
AWS_KEYS = {"AWS_ACCESS_KEY": "AWS_ACCESS_KEY_ID", "AWS_SECRET_KEY": "AWS_SECRET_ACCESS_KEY"}


def looks_legacy(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return bool(lines) and all(LINE_RE.fullmatch(ln) for ln in lines)


def parse(text: str, path: Path) -> dict:
    variables = _variables(text, path)
    if OPENSTACK.keys() & variables.keys():
        data = {"type": "openstack", "remote_env_file": LEGACY_ENV_FILE, **_mapped(variables, OPENSTACK, path)}
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
        if name in AWS_KEYS:  # the name only: the value is a secret
            log.warning("%s: legacy variable %s is not used by migratio: set %s in the worker's "
                        "environment (e.g. /etc/migratio/migratio.env) or use an AWS profile",
                        path, name, AWS_KEYS[name])
        elif key is None:
            log.warning("%s: legacy variable %s is not used by migratio", path, name)
        elif key in INTEGERS:
            if not value.isdigit():
                raise ConfigError(f"{path}: {name} must be a number, got {value!r}")
            data[key] = int(value)
        else:
            data[key] = value
    return data

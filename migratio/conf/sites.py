"""Destination site confs: `<sites_dir>/<site_id>.conf`, YAML or the old tool's shell format."""

import ipaddress
import re
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from migratio import ids
from migratio.conf import legacy
from migratio.conf.config import read_yaml
from migratio.conf.validation import build, convert
from migratio.errors import ConfigError, InvalidInput

SUFFIX = ".conf"
# What `host` and `user` may be: never anything ssh could read as an option (a leading '-').
HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}\$?")  # POSIX portable names (+ Samba's '$')
MAX_STREAMS = 16  # `streams: N` at most (`auto` picks at most 8, see migratio.openstack.ranges)


@dataclass(frozen=True)
class RegisterOptions:
    via: Literal["ssh", "api"] = "ssh"
    cloud: str | None = None  # clouds.yaml cloud of the destination, for via: api


@dataclass(frozen=True)
class BootCheck:
    flavor: str
    network: str | None = None
    timeout: int = 900
    delete_image_on_failure: bool = False


@dataclass(frozen=True)
class OpenStackOptions:
    host: str
    user: str
    port: int = 22
    key_file: Path | None = None
    known_hosts: Path = Path("~/.ssh/known_hosts")
    staging_dir: str = "/var/tmp/migratio-staging"
    remote_env_file: str | None = None
    glance_command: str = "glance"
    remote_python: str | None = "python3"  # runs migratio's small Glance API client there; None: CLI only
    disk_format: str | None = None
    register: RegisterOptions = field(default_factory=RegisterOptions)
    boot_check: BootCheck | None = None
    ssh_cipher: str | None = None
    compress: Literal["auto", True, False] = "auto"  # zstd on the stream (auto: when it pays); rsync's only if true
    stream: bool = True  # ssh the image straight into `glance image-upload` (not via api)
    streams: int | str = 1  # ssh connections the stream uses at once: 1..MAX_STREAMS or "auto" (openstack.ranges)
    connect_timeout: int = 20

    @property
    def glance_argv(self) -> list[str]:
        """`glance_command` as words, split as a shell would (`sudo -E glance`): the worker's and the check's."""
        return shlex.split(self.glance_command)


@dataclass(frozen=True)
class AwsOptions:
    region: str
    endpoint_url: str | None = None
    profile: str | None = None  # a named profile of the shared AWS config; None: the default chain
    bucket: str | None = None
    import_mode: Literal["ebs-direct", "vm-import"] = field(
        default="ebs-direct", metadata={"key": "import"}
    )
    role_name: str = "vmimport"
    vm_import_format: Literal["raw", "vmdk"] = "vmdk"
    architecture: Literal["x86_64", "arm64", "i386"] = "x86_64"
    boot_mode: Literal["legacy-bios", "uefi", "uefi-preferred"] | None = None
    ena_support: bool = True
    root_device_name: str = "/dev/xvda"
    blocks_in_flight: int = 8
    poll_interval: int = 15


@dataclass(frozen=True)
class Limits:
    max_concurrent: int | None = None
    bandwidth_limit: int | None = None  # KiB/s, like rsync --bwlimit


@dataclass(frozen=True)
class Site:
    id: str
    type: Literal["openstack", "aws"]
    path: Path
    options: OpenStackOptions | AwsOptions
    pipeline: list[str] | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def openstack(self) -> OpenStackOptions:
        """The options of an OpenStack destination; a ConfigError for another type."""
        if not isinstance(self.options, OpenStackOptions):
            raise self._not("openstack")
        return self.options

    @property
    def aws(self) -> AwsOptions:
        """The options of an Amazon EC2 destination; a ConfigError for another type."""
        if not isinstance(self.options, AwsOptions):
            raise self._not("aws")
        return self.options

    def _not(self, wanted: str) -> ConfigError:
        return ConfigError(f"{self.path}: site {self.id} is of type {self.type}, not {wanted}")


OPTIONS = {"openstack": OpenStackOptions, "aws": AwsOptions}
COMMON_KEYS = ("type", "pipeline", "max_concurrent", "bandwidth_limit")


def site_path(sites_dir: Path, site_id: str) -> Path:
    """The conf file of a site; the id is validated before the path is built."""
    try:
        safe = ids.site_id(site_id)
    except InvalidInput as exc:
        raise InvalidInput(f"destination site: {exc}") from None
    return sites_dir / f"{safe}{SUFFIX}"


def load_site(sites_dir: Path, site_id: str) -> Site:
    path = site_path(sites_dir, site_id)
    if not path.is_file():
        raise ConfigError(f"unknown destination site '{site_id}': no file {path}")
    text = _read(path)
    data = legacy.parse(text, path) if legacy.looks_legacy(text) else read_yaml(path)
    return _site(site_id, path, data)


def list_sites(sites_dir: Path) -> list[str]:
    if not sites_dir.is_dir():
        return []
    return sorted(p.stem for p in sites_dir.glob(f"*{SUFFIX}") if ids.SITE_ID_RE.fullmatch(p.stem))


def _site(site_id: str, path: Path, data: object) -> Site:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys")
    kind = data.get("type")
    if kind not in OPTIONS:
        raise ConfigError(f"{path}: key 'type' must be one of {', '.join(OPTIONS)}, got {kind!r}")
    rest = {k: v for k, v in data.items() if k not in COMMON_KEYS}
    options = build(OPTIONS[kind], rest, str(path))
    limits = build(Limits, {k: data[k] for k in ("max_concurrent", "bandwidth_limit") if k in data}, str(path))
    pipeline = convert(list[str] | None, data.get("pipeline"), f"{path}: key 'pipeline'")
    if isinstance(options, OpenStackOptions):
        _check_ssh_target(options, path)
        _check_words(options, path)
        _check_streams(options.streams, path)
    options = _resolve_paths(options, path.parent)
    return Site(site_id, kind, path, options, pipeline, limits)


def _check_ssh_target(options: OpenStackOptions, path: Path) -> None:
    """`host` a host name or IP literal, `user` a POSIX user name: neither can become an ssh option."""
    if not _is_host(options.host):
        raise ConfigError(f"{path}: key 'host' must be a host name or an IP address, got {options.host!r:.80}")
    if not USER_RE.fullmatch(options.user):
        raise ConfigError(f"{path}: key 'user' must be a POSIX user name (letters, digits, '_', '.', '-', "
                          f"not first), got {options.user!r:.80}")


def _check_words(options: OpenStackOptions, path: Path) -> None:
    """The commands given as shell words split into words (`glance_command` into one at least)."""
    for key in ("glance_command", "remote_python"):
        try:
            words = shlex.split(getattr(options, key) or "")
        except ValueError as exc:
            raise ConfigError(f"{path}: key '{key}' cannot be split into words: {exc}") from None
        if key == "glance_command" and not words:
            raise ConfigError(f"{path}: key '{key}' is empty")


def _check_streams(streams: int | str, path: Path) -> None:
    if streams != "auto" and not (isinstance(streams, int) and 1 <= streams <= MAX_STREAMS):
        raise ConfigError(f"{path}: key 'streams' must be a whole number from 1 to {MAX_STREAMS} or 'auto', "
                          f"got {streams!r:.80}")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 253 and all(HOST_LABEL_RE.fullmatch(label) for label in labels)


def _resolve_paths(options, base: Path):
    changes = {
        f.name: base / getattr(options, f.name).expanduser()
        for f in fields(options)
        if isinstance(getattr(options, f.name), Path)
    }
    return replace(options, **changes)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise ConfigError(f"{path}: not UTF-8 text (byte {byte:#04x} at offset {exc.start})") from None

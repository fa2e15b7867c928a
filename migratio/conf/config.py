"""config.yml: this worker's own settings (see config.yml.example for every key)."""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Mapping

import yaml

from migratio import ids
from migratio.conf.validation import build
from migratio.errors import ConfigError, InvalidInput
from migratio.logs import LogFormat
from migratio.units import TiB, parse_size

DEFAULT_PATH = Path("config.yml")
ENV_VAR = "MIGRATIO_CONFIG"
DEFAULT_MAX_VIRTUAL_SIZE = 2 * TiB


@dataclass(frozen=True)
class Config:
    name: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "atmosphere"
    log_dir: Path = Path("log")
    work_dir: Path = Path("/var/tmp/migratio")
    images_dir: Path = Path("/var/lib/glance/images")
    sites_dir: Path = Path("config")
    cloud: str | None = None
    clouds_file: Path | None = None
    job_timeout: int = 6 * 3600
    result_ttl: int = 7 * 86400
    failure_ttl: int = 30 * 86400
    retries: int = 3
    retry_intervals: list[int] = field(default_factory=lambda: [60, 300, 900])
    lock_ttl: int = 3600
    feedback_interval: float = 2.0  # seconds between two status lines of one migration to Atmosphere
    metrics_port: int | None = None  # Prometheus metrics served by the worker (see migratio.queue.metrics)
    metrics_listen: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: LogFormat = "text"  # json: one object per line, for Loki/ELK (see migratio.logs)
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE  # bytes; larger images are refused by inspect

    @property
    def queue_name(self) -> str:
        return f"migration_{self.name}"


def config_path(option: str | None, environ: Mapping[str, str]) -> Path:
    """--config wins, then $MIGRATIO_CONFIG, then ./config.yml."""
    return Path(option or environ.get(ENV_VAR) or DEFAULT_PATH)


def load_config(path: Path) -> Config:
    """Read and validate config.yml; relative paths in it are relative to its directory."""
    data = _sizes(read_yaml(path), path)
    config = build(Config, data, str(path))
    _check(config, path)
    base = path.resolve().parent
    return _with_paths(config, base)


def read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None


def _sizes(data: object, path: Path) -> object:
    """`max_virtual_size` may be written as a size ("2T", "500G") or in bytes."""
    value = data.get("max_virtual_size") if isinstance(data, dict) else None
    if not isinstance(value, str):
        return data
    try:
        return {**data, "max_virtual_size": parse_size(value)}
    except InvalidInput:
        raise ConfigError(f"{path}: key 'max_virtual_size' must be a size like 2T or 500G, got {value!r}") from None


def _check(config: Config, path: Path) -> None:
    try:
        ids.site_id(config.name)
    except InvalidInput as exc:
        raise ConfigError(f"{path}: key 'name': {exc}") from None
    if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{path}: key 'redis_url' must start with redis://, rediss:// or unix://")
    for key in ("job_timeout", "result_ttl", "failure_ttl", "lock_ttl"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"{path}: key '{key}' must be a positive number of seconds")
    if not 0 <= config.feedback_interval <= 60:
        raise ConfigError(f"{path}: key 'feedback_interval' must be between 0 and 60 seconds")
    if config.metrics_port is not None and not 0 < config.metrics_port < 65536:
        raise ConfigError(f"{path}: key 'metrics_port' must be a TCP port (1-65535) or null, got {config.metrics_port}")
    if config.retries < 0 or any(i < 0 for i in config.retry_intervals):
        raise ConfigError(f"{path}: keys 'retries' and 'retry_intervals' must not be negative")
    if config.max_virtual_size <= 0:
        raise ConfigError(f"{path}: key 'max_virtual_size' must be a positive size like 2T, "
                          f"got {config.max_virtual_size}")


def _with_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (base / p.expanduser())

    return replace(
        config,
        log_dir=resolve(config.log_dir),
        work_dir=resolve(config.work_dir),
        images_dir=resolve(config.images_dir),
        sites_dir=resolve(config.sites_dir),
        clouds_file=resolve(config.clouds_file),
    )

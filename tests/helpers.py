"""Small helpers shared by tests."""

from pathlib import Path

import yaml

from migratio.conf.config import Config, load_config


def config_factory(tmp_path: Path, **overrides) -> Config:
    """Write a config.yml under tmp_path and load it the way the worker does."""
    data = {
        "name": "site-a",
        "redis_url": "redis://127.0.0.1:6379/0",
        "log_dir": str(tmp_path / "log"),
        "work_dir": str(tmp_path / "work"),
        "images_dir": str(tmp_path / "images"),
        "sites_dir": str(tmp_path / "sites"),
        "retries": 0,
    }
    data.update(overrides)
    (tmp_path / "sites").mkdir(exist_ok=True)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def write_site(sites_dir: Path, site_id: str, text: str) -> Path:
    sites_dir.mkdir(parents=True, exist_ok=True)
    path = sites_dir / f"{site_id}.conf"
    path.write_text(text)
    return path

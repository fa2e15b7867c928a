"""migratio config for a running lab: config.yml, clouds.yaml and the site-b conf.

Used by `make demo`, the benchmark and the end-to-end tests, so all three run the worker the
way an operator would configure it.
"""

from pathlib import Path

from support.lab.lab import HEAD_TOKEN, Lab


def write_migratio_config(lab: Lab, directory: Path, site_b: dict | None = None, **config) -> Path:
    """Write <directory>/config.yml (+ clouds.yaml, sites/site-b.conf); returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sites").mkdir(exist_ok=True)
    clouds = directory / "clouds.yaml"
    clouds.write_text(_yaml({"clouds": {
        name: {"auth_type": "admin_token", "auth": {"endpoint": site.glance_url, "token": HEAD_TOKEN}}
        for name, site in lab.sites.items()
    }}))
    head = lab.head_node
    conf = {"type": "openstack", "host": head.host, "port": head.port, "user": head.user,
            "key_file": str(head.key_file), "known_hosts": str(head.known_hosts),
            "staging_dir": str(head.staging_dir), "remote_env_file": str(head.env_file),
            **(site_b or {})}
    (directory / "sites" / "site-b.conf").write_text(_yaml(conf))
    values = {"name": "site-a", "redis_url": lab.redis_url, "cloud": "site-a", "clouds_file": str(clouds),
              "images_dir": str(lab.site_a.images_dir), "work_dir": str(directory / "work"),
              "log_dir": str(directory / "log"), "sites_dir": str(directory / "sites"), **config}
    path = directory / "config.yml"
    path.write_text(_yaml(values))
    return path


def _yaml(data) -> str:
    """JSON is YAML: no PyYAML needed in the lab's stdlib-only code."""
    import json

    return json.dumps(data, indent=2, default=str) + "\n"

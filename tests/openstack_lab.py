"""Helpers for tests on the lab's OpenStack side: site-b's head node as a site conf, keys it does
not know, a renamed or tampered source image."""

import json
import subprocess
from pathlib import Path

import yaml

from migratio.conf.sites import OpenStackOptions


def head_options(lab, **overrides) -> dict:
    """The site-b conf keys (as YAML would give them) for the lab's head node."""
    head = lab.head_node
    options = {"type": "openstack", "host": head.host, "port": head.port, "user": head.user,
               "key_file": str(head.key_file), "known_hosts": str(head.known_hosts),
               "staging_dir": str(head.staging_dir), "remote_env_file": str(head.env_file),
               "connect_timeout": 10}
    options.update(overrides)
    return {k: v for k, v in options.items() if v is not None}


def head_site(lab, **overrides) -> OpenStackOptions:
    options = head_options(lab, **overrides)
    options.pop("type")
    for key in ("key_file", "known_hosts"):
        if key in options:
            options[key] = Path(options[key])
    return OpenStackOptions(**options)


def site_conf(lab, **overrides) -> str:
    return yaml.safe_dump(head_options(lab, **overrides))


def rename(api, image_id: str, name: str) -> None:
    """Give a lab image another name (the lab's Glance API takes a JSON patch)."""
    api.request("PATCH", f"/v2/images/{image_id}", json.dumps([{"op": "replace", "path": "/name", "value": name}])
                .encode(), headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})


def tamper(lab, image_id: str, size: int, path: Path) -> None:
    """Put `path`'s bytes in site-a's store file of the image, cut or padded to its recorded `size`
    (the store was tampered with; Glance's record is unchanged)."""
    store_file = lab.site_a.images_dir / image_id
    store_file.write_bytes(path.read_bytes())
    with open(store_file, "r+b") as f:
        f.truncate(size)


def new_key(path: Path) -> Path:
    """A fresh ed25519 key pair at `path` and `path`.pub, unknown to the head node."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def impostor_known_hosts(path: Path, host: str, port: int) -> Path:
    """Write a known_hosts at `path` with a fresh key for [host]:port: the real host's key will not match."""
    key = new_key(path.with_name(f"{path.name}-impostor"))
    pub = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    path.write_text(f"[{host}]:{port} {pub}\n")
    return path

"""What tests build to hand to the code: a config.yml, site confs, a job's Context, the records
of copies at the destination."""

import dataclasses
import hashlib
import uuid
from pathlib import Path

import yaml

from migratio.conf.config import Config, load_config
from migratio.conf.sites import OpenStackOptions, RegisterOptions, Site
from migratio.openstack.glance import SourceImage
from migratio.pipeline.context import Context
from migratio.pipeline.services import Services
from migratio.pipeline.status import DictMeta, JobInfo
from migratio.steps import common
from tests.doubles import PROJECT, Lines, MemoryGlance

# -- config and site confs


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


# -- a job's Context


def unusable(*_args):
    raise AssertionError("a step asked for a client this test does not provide")


def given_services(**given) -> Services:
    """Services with the `given` clients; asking for any other fails the test."""
    return Services(**{f.name: unusable for f in dataclasses.fields(Services)} | given)


def make_context(tmp_path: Path, site: Site | None = None, *, services: Services | None = None,
                 job_id: str = "job-1", image_id: str | None = None, workdir: Path | None = None) -> Context:
    """A job's Context from site-a to `site` (default: an OpenStack site-b without options).

    The config is config_factory's, `services` default to given_services() (none usable), the
    work dir (default tmp_path/work) exists, meta is a DictMeta (`ctx.meta.data`) and the status
    lines go to a Lines (`ctx.status.lines`).
    """
    site = site or Site("site-b", "openstack", tmp_path / "site-b.conf", options=None)
    workdir = workdir or tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    job = JobInfo(job_id, image_id or str(uuid.uuid4()), "site-a", site.id)
    return Context(job, config_factory(tmp_path), site, services or given_services(), workdir, DictMeta(), Lines())


DATA = b"\x07" * 5000  # the source image's bytes in glance_dest_context


def glance_dest_context(tmp_path: Path, dest: MemoryGlance, **site_kw) -> Context:
    """A Context as locate/inspect/convert leave it for an OpenStack site-b registering via the
    API into `dest`: the source is a qcow2 of DATA (md5, sha512 and an owner md5 hint)."""
    options = OpenStackOptions(host="h", user="u", register=RegisterOptions(via="api", cloud="b"), **site_kw)
    site = Site("site-b", "openstack", tmp_path / "sites/site-b.conf", options)
    ctx = make_context(tmp_path, site, services=given_services(glance=lambda cloud: dest))
    payload = ctx.workdir / "payload"
    payload.write_bytes(DATA)
    ctx.image = SourceImage(ctx.job.image_id, "centos", "qcow2", "bare", len(DATA), hashlib.md5(DATA).hexdigest(),
                            "sha512", hashlib.sha512(DATA).hexdigest(),
                            {"os_distro": "centos", "owner_specified.openstack.md5": "x"}, path=payload)
    ctx.payload, ctx.payload_format = payload, "qcow2"
    ctx.payload_hash = common.source_hashes(ctx.image)
    return ctx


# -- copies at the destination


ORIGIN_KEYS = ("source_t", "source_uuid", "source_cs")
STALE_ORIGIN = {"source_t": "site-z", "source_uuid": "11111111-2222-3333-4444-555555555555", "source_cs": "site-z"}


def origin_of(image: dict) -> tuple:
    return tuple(image.get(k) for k in ORIGIN_KEYS)


def ours(ctx: Context, status: str, **kw) -> dict:
    """A copy as this migratio makes it (source_t + source_uuid + source_cs); kw may drop a key with None."""
    image = {"id": str(uuid.uuid4()), "status": status, "source_t": "site-a", "source_uuid": ctx.job.image_id,
             "source_cs": "site-a", "owner": PROJECT, **kw}
    return {k: v for k, v in image.items() if v is not None}


def right_copy(ctx: Context, **changes) -> dict:
    """An active copy of ours holding the source's bytes (qcow2, size, md5, sha512), with `changes`."""
    image = ctx.image
    return ours(ctx, "active", **{"disk_format": "qcow2", "size": image.size, "checksum": image.checksum,
                                  "os_hash_algo": "sha512", "os_hash_value": image.os_hash_value, **changes})

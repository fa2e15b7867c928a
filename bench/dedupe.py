"""The dedupe check's cost against the number of images already on the destination.

migratio: one filtered list (`glance image-list --property-filter source_uuid=... ...` over one
ssh connection, the `dedupe` step's own code; and the Glance API variant for `register: via api`).
legacy:   `glance image-list`, then `glance image-show ID` for every image (to compare checksums),
in one ssh session as the old scripts did. Past `sample` images the per-image cost (one glance
CLI start each) is sampled and extrapolated.
"""

from __future__ import annotations

import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.destinations import Destination
from bench.flows import legacy_list, remote_checksums
from migratio.openstack import auth
from migratio.openstack.destination import open_destination
from migratio.openstack.glance import GlanceClient
from migratio.openstack.ssh import RemoteShell

REPEAT = 3


def fill(dest: Destination, existing: list[str], count: int) -> None:
    """Grow `existing` to `count` image records on the destination (POST /v2/images only, no data)."""
    api = dest.api()

    def create(i: int) -> str:
        return api.create_image(f"bench-dedupe-{i:04d}", source_uuid=str(uuid.uuid4()),
                                source_cs="bench-elsewhere")["id"]

    with ThreadPoolExecutor(4) as pool:
        existing += pool.map(create, range(len(existing), count))


def migratio_ssh(site_options, filters: dict) -> float:
    """Seconds for what the dedupe step does via ssh: connect, one filtered list, close."""
    start = time.monotonic()
    with open_destination(site_options, "site-b", api=None, connect=RemoteShell.connect) as glance:
        glance.find(filters)
    return time.monotonic() - start


def migratio_api(glance_url: str, filters: dict) -> float:
    """Seconds for the dedupe step via the Glance API (`register: via api`): one GET."""
    start = time.monotonic()
    session = auth.session(None, None, {"OS_IMAGE_URL": glance_url, "OS_AUTH_TOKEN": "lab-token"})
    GlanceClient(session, site="site-b").find(filters)
    return time.monotonic() - start


def legacy(dest: Destination, env: dict, sample: int) -> dict:
    """The old scripts' remote dedupe: image-list, then image-show per image in one ssh session
    (transfer.sh lines 42-47); past `sample` images the per-image cost is extrapolated."""
    start = time.monotonic()
    ids = legacy_list(dest, env)
    list_s = time.monotonic() - start
    measured = ids[:sample]
    t0 = time.monotonic()
    if measured:
        remote_checksums(dest, measured, env)
    per_show = (time.monotonic() - t0) / len(measured) if measured else 0.0
    sampled = len(ids) > len(measured)
    return {"images_listed": len(ids), "calls": 1 + len(ids), "list_s": list_s, "per_show_s": per_show,
            "shows_measured": len(measured), "sampled": sampled,
            "total_s": list_s + per_show * len(ids)}


def measure(dest: Destination, site_options, counts: list[int], image_id: str, source_cs: str,
            env: dict, sample: int, log=print) -> list[dict]:
    """One row per count; the destination keeps the records it was filled with (the caller discards it)."""
    filters = {"source_uuid": image_id}  # what the dedupe step asks (the site key is checked locally)
    records: list[str] = []
    rows = []
    for count in sorted(counts):
        t0 = time.monotonic()
        fill(dest, records, count)
        log(f"  dedupe: {count} images on the destination (filled in {time.monotonic() - t0:.0f} s)")
        ssh = [migratio_ssh(site_options, filters) for _ in range(REPEAT)]
        api = [migratio_api(dest.glance_url, filters) for _ in range(REPEAT)]
        old = legacy(dest, env, sample)
        rows.append({"images": count, "images_on_destination": old["images_listed"],
                     "migratio_ssh_s": statistics.median(ssh), "migratio_api_s": statistics.median(api),
                     "migratio_calls": 1, "legacy_s": old["total_s"], "legacy_calls": old["calls"],
                     "legacy_list_s": old["list_s"], "legacy_per_show_s": old["per_show_s"],
                     "legacy_sampled": old["sampled"], "legacy_shows_measured": old["shows_measured"]})
    return rows

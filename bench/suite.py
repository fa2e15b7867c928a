"""The benchmark itself: images, cases (link x cap), flows, dedupe cost; returns one result dict."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import dedupe, flows
from bench.destinations import Destination, NetnsSite, loopback
from bench.measure import Bytes, mb, shim_env, write_ssh_shim
from bench.migratio_flow import WorkerProcess, write_config
from migratio.conf.sites import load_site
from support.lab.images import make_qcow2, parse_size
from support.lab.lab import HEAD_TOKEN, Lab

MiB = 1024 * 1024
CASES = {  # name -> (link, capped)
    "veth-capped": ("veth", True),
    "veth-unshaped": ("veth", False),
    "loopback": ("loopback", False),
    "loopback-capped": ("loopback", True),
}
FLOWS = ("ceiling", "glance-floor", "legacy", "migratio")
ASSUMPTIONS = [
    "legacy: the old tool sent the image as raw, unsparse bytes (issue 8): the benchmark converts the "
    "qcow2 to raw beforehand (not timed, as if Glance held it raw) and sends it with plain rsync "
    "(no -S, no -z, ssh's default cipher) to the head node's tmp dir, then runs "
    "`glance image-create ... < FILE` there and removes the file; --legacy-format qcow2 sends the "
    "qcow2 file as is instead",
    "legacy dedupe: `glance image-list`, then `glance image-show ID` over a new ssh connection per "
    "image, comparing checksums (one ssh + one glance CLI start per image)",
    "ceiling: the data extents (SEEK_DATA/SEEK_HOLE) of the image file in site-a's store, piped "
    "once into `ssh HEAD 'cat > /dev/null'` (cipher --ceiling-cipher); nothing is registered",
    "glance-floor: what the destination Glance alone needs to take the image in: `glance image-create "
    "--file` over ssh of a copy already on the head node (copied there beforehand, not timed); no "
    "migration can be faster than max(ceiling, glance-floor)",
    "cap: the same rate for all three, at the transfer itself (tc is not used: this kernel's tbf/htb "
    "undershoot): migratio gets it as its site conf's bandwidth_limit (KiB/s), which paces its ssh "
    "stream (migratio.openstack.stream.Pacer; rsync --bwlimit on its rsync path); legacy: rsync --bwlimit; "
    "ceiling: the same Pacer on the benchmark's pipe into ssh. None saves up credit while stalled",
    "bytes sent: veth root-end tx counter on the veth link (all traffic: data, ssh, control); on "
    "loopback what the ssh clients report sent (`ssh -E LOG -o LogLevel=VERBOSE` via a PATH shim; "
    "migratio's paramiko control connections are not in it)",
    "migratio wall time: RQ's enqueued_at -> ended_at of the job on an idle, already running worker "
    "(enqueue to verified); worker_s: started_at -> ended_at",
    "peak RSS: sampled every 0.25 s over the worker and all its children (RQ's work-horse, ssh, "
    "rsync, qemu-img): the largest VmHWM of any one process, and the peak of their summed PSS (a "
    "fork's shared pages counted once); for ceiling and legacy the same over their ssh/rsync",
]


@dataclass
class Options:
    sizes: list[str] = field(default_factory=lambda: ["4G", "16G"])
    data_percent: float = 15.0
    cap_mbit: float | None = 200.0
    cases: list[str] = field(default_factory=lambda: ["veth-capped", "veth-unshaped", "loopback"])
    flows: list[str] = field(default_factory=lambda: list(FLOWS))
    legacy_format: str = "raw"
    dedupe_counts: list[int] = field(default_factory=lambda: [10, 100, 1000])
    dedupe_sample: int = 25
    ceiling_cipher: str = "aes128-gcm@openssh.com"
    subnet: str | None = None

    @property
    def cap_bytes(self) -> float | None:
        return self.cap_mbit * 1e6 / 8 if self.cap_mbit else None

    @property
    def cap_kib(self) -> int | None:
        return int(self.cap_bytes // 1024) if self.cap_mbit else None


@dataclass
class Image:
    size: str
    virtual_bytes: int
    data_mib: int
    id: str
    checksum: str
    store_path: Path       # the file in site-a's Glance store: what migratio and the ceiling read
    file_bytes: int
    allocated_bytes: int
    legacy_path: Path      # what the legacy flow sends
    legacy_format: str
    prepare_s: dict


def run_bench(lab: Lab, opts: Options, scratch: Path, log=print) -> dict:
    """Run every case of `opts` on a started lab; `scratch` holds logs, configs and temp files."""
    unknown = [c for c in opts.cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case {unknown[0]!r} (known: {', '.join(CASES)})")
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = {"started_at": time.strftime("%FT%T%z"), "machine": machine(), "options": asdict(opts),
              "assumptions": ASSUMPTIONS, "images": [], "runs": [], "dedupe": []}
    shim = write_ssh_shim(scratch / "shim")
    images: list[Image] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_drop_images, lab, images)
        for size in opts.sizes:
            images.append(prepare_image(lab, size, opts, scratch, log))
            result["images"].append({k: str(v) if isinstance(v, Path) else v
                                     for k, v in asdict(images[-1]).items()})
        dests = {"loopback": loopback(lab, scratch)}
        if any(CASES[c][0] == "veth" for c in opts.cases):
            log("== starting site-b in a network namespace behind a veth pair")
            netns = NetnsSite(lab, scratch / "netns", opts.subnet)
            stack.callback(netns.stop)
            dests["veth"] = netns.start()
            result["veth"] = netns.link.describe()
        for case in opts.cases:
            link, capped = CASES[case]
            for image in images:
                log(f"== {case}: {image.size} image ({image.file_bytes / MiB:.0f} MiB qcow2)")
                result["runs"].append(run_case(lab, dests[link], case, capped, image, opts,
                                               scratch / case / image.size, shim, log))
        if opts.dedupe_counts:
            dest = dests.get("veth") or dests["loopback"]
            log(f"== dedupe cost on the {dest.name} destination")
            result["dedupe"] = run_dedupe(lab, dest, images[0], opts, scratch / "dedupe", shim, log)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["duration_s"] = round(time.time() - started, 1)
    return result


# --------------------------------------------------------------------------- images


def prepare_image(lab: Lab, size: str, opts: Options, scratch: Path, log) -> Image:
    virtual = parse_size(size)
    data_mib = max(1, int(virtual // MiB * opts.data_percent / 100))
    log(f"== image {size}: {data_mib} MiB of data, made with qemu-img and uploaded to site-a")
    made = scratch / f"bench-{size}.qcow2"
    t0 = time.monotonic()
    make_qcow2(made, size, data_mib, seed=zlib.crc32(size.encode()))
    t1 = time.monotonic()
    try:
        record = lab.upload_image("site-a", made, f"bench-{size}")
    finally:
        made.unlink(missing_ok=True)
    t2 = time.monotonic()
    store = lab.site_a.images_dir / record["id"]
    legacy_path, legacy_format = store, "qcow2"
    if opts.legacy_format == "raw" and "legacy" in opts.flows:
        legacy_path, legacy_format = scratch / f"bench-{size}.raw", "raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(store), str(legacy_path)],
                       check=True, capture_output=True)
    t3 = time.monotonic()
    return Image(size, virtual, data_mib, record["id"], record["checksum"], store, store.stat().st_size,
                 flows.allocated_bytes(store), legacy_path, legacy_format,
                 {"make_s": round(t1 - t0, 1), "upload_s": round(t2 - t1, 1),
                  "legacy_raw_s": round(t3 - t2, 1)})


def _drop_images(lab: Lab, images: list[Image]) -> None:
    for image in images:
        with contextlib.suppress(Exception):
            lab.site_a.api().delete_image(image.id)
        if image.legacy_path != image.store_path:
            image.legacy_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- one case


def run_case(lab, dest: Destination, case: str, capped: bool, image: Image, opts: Options,
             directory: Path, shim: Path, log) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    cap_bytes, cap_kib = (opts.cap_bytes, opts.cap_kib) if capped else (None, None)
    run = {"case": case, "link": dest.name, "capped": capped, "cap_mbit": opts.cap_mbit if capped else None,
           "size": image.size, "image_id": image.id, "flows": {}}
    ssh_log = directory / "ssh.log"
    env = shim_env(shim, ssh_log)
    keep = {i["id"] for i in dest.api().list_images()}
    if "ceiling" in opts.flows:
        r = flows.ceiling(dest, image.store_path, cap_bytes, env, opts.ceiling_cipher,
                          Bytes(ssh_log, dest.link), directory)
        run["flows"]["ceiling"] = r
        log(f"   ceiling  {_line(r)}")
    if "glance-floor" in opts.flows:
        r = flows.ingest_floor(dest, image.store_path, "qcow2", env)
        r.update(bytes_sent=0, bytes_source="none (on the head node)")
        run["flows"]["glance-floor"] = r
        log(f"   glance-floor {r['wall_s']:5.1f} s (the destination Glance taking the qcow2 in, on the head node)")
    if "legacy" in opts.flows:
        r = flows.legacy(dest, image.legacy_path, image.legacy_format, image.checksum, cap_kib, env,
                         Bytes(ssh_log, dest.link), directory)
        r["format"] = image.legacy_format
        run["flows"]["legacy"] = r
        dest.delete_images(keep)
        log(f"   legacy   {_line(r)} (dedupe {r['dedupe_s']:.1f} s, transfer {r['transfer_s']:.1f} s, "
            f"register {r['register_s']:.1f} s)")
    if "migratio" in opts.flows:
        run["flows"]["migratio"] = r = run_migratio(lab, dest, image, cap_kib, directory, env, ssh_log)
        dest.delete_images(keep)
        log(f"   migratio {_line(r)}; steps {r['steps']}; already present: "
            f"{r['already_present']['worker_s']:.2f} s (via api {r['already_present_api']['worker_s']:.2f} s)")
    run["ratios"] = ratios(run["flows"])
    return run


def run_migratio(lab, dest: Destination, image: Image, cap_kib: int | None, directory: Path, env: dict,
                 ssh_log: Path) -> dict:
    """The migration, then the same job again ('already present'), via ssh and via the Glance API."""
    config = write_config(lab, directory / "migratio", dest.site_conf(bandwidth_limit=cap_kib))
    with WorkerProcess(config, env, directory / "worker.log") as worker:
        with Bytes(ssh_log, dest.link) as counter:
            job = worker.migrate(image.id)
        again = worker.migrate(image.id)
        use_api(config, dest)
        via_api = worker.migrate(image.id)
        worker.stop()
        memory = worker.memory()
    result = job.pop("result") or {}
    if result.get("already_present") or not result.get("verified"):
        raise RuntimeError(f"migratio job {job['job_id']} did not migrate and verify: {result}")
    for later in (again, via_api):
        if not (later.get("result") or {}).get("already_present"):
            raise RuntimeError(f"job {later['job_id']} was not 'already present': {later['result']}")
    return {**job, **counter.result(), "payload_bytes": image.file_bytes, **memory,
            "dest_image_id": result.get("dest_image_id"), "verified": result.get("verified"),
            "already_present": {k: again[k] for k in ("job_id", "wall_s", "worker_s", "steps")},
            "already_present_api": {k: via_api[k] for k in ("job_id", "wall_s", "worker_s", "steps")}}


def use_api(config: Path, dest: Destination) -> None:
    """Switch the worker's site-b conf to `register: via api` (the worker reads it per job)."""
    directory = config.parent
    clouds = json.loads((directory / "clouds.yaml").read_text())  # JSON is YAML
    clouds["clouds"]["bench-dest"] = {"auth_type": "admin_token",
                                      "auth": {"endpoint": dest.glance_url, "token": HEAD_TOKEN}}
    (directory / "clouds.yaml").write_text(json.dumps(clouds, indent=2))
    conf = directory / "sites" / "site-b.conf"
    site = json.loads(conf.read_text())
    site["register"] = {"via": "api", "cloud": "bench-dest"}
    conf.write_text(json.dumps(site, indent=2))


def ratios(results: dict) -> dict:
    wall = {name: r["wall_s"] for name, r in results.items()}
    out = {}
    if "migratio" in wall and "ceiling" in wall:
        out["migratio/ceiling"] = round(wall["migratio"] / wall["ceiling"], 2)
        if "glance-floor" in wall:
            floor = max(wall["ceiling"], wall["glance-floor"])
            out["migratio/max(ceiling,glance-floor)"] = round(wall["migratio"] / floor, 2)
    if "legacy" in wall and "migratio" in wall:
        out["legacy/migratio"] = round(wall["legacy"] / wall["migratio"], 2)
    return out


def _line(r: dict) -> str:
    return (f"{r['wall_s']:7.1f} s  {r['bytes_sent'] / MiB:8.0f} MiB sent  "
            f"peak RSS {mb(r.get('peak_rss_kib'))} MB")


# --------------------------------------------------------------------------- dedupe


def run_dedupe(lab, dest: Destination, image: Image, opts: Options, directory: Path, shim: Path,
               log) -> list[dict]:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(lab, directory / "migratio", dest.site_conf())
    from migratio.conf.config import load_config

    site = load_site(load_config(config).sites_dir, "site-b")
    env = shim_env(shim, directory / "ssh.log")
    keep = {i["id"] for i in dest.api().list_images()}
    try:
        return dedupe.measure(dest, site.options, opts.dedupe_counts, image.id, "site-a", env,
                              opts.dedupe_sample, log)
    finally:
        if dest.link is None:  # the lab's own site-b outlives the benchmark: leave it as it was
            dest.delete_images(keep)


# --------------------------------------------------------------------------- machine


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "memory_mib": mem, "python": platform.python_version(), "loadavg_start": os.getloadavg()}

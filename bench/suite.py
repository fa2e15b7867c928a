"""The benchmark itself: images, cases (link x cap x RTT), flows, dedupe cost; returns one result dict."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from bench import dedupe, flows
from bench.cases import CASES, FLOWS, Case, Options, runs_on, split_spec
from bench.destinations import Destination, NetnsSite, loopback
from bench.images import Image, prepare_image
from bench.latency import proxied, proxy_for, proxy_overhead
from bench.measure import Bytes, mb, shim_env, write_ssh_shim
from bench.migratio_flow import WorkerProcess, write_config
from migratio.conf.sites import load_site
from support.lab.lab import HEAD_ENV, HEAD_TOKEN, Lab

__all__ = ["CASES", "FLOWS", "Options", "run_bench"]
MiB = 1024 * 1024
ASSUMPTIONS = [
    "images: 'realistic' = an ext4 filesystem made with `mke2fs -t ext4 -d DIR` (no mount) from a copy of "
    "regular files of /usr (sorted walk) up to --data-percent of the virtual size, plus free space; 'random' "
    "= pseudo-random 1 MiB extents spread over the disk (incompressible). Each is uploaded to site-a's Glance "
    "in its stored format: qcow2 (converted with qemu-img) or raw (the disk as it is; Glance writes every "
    "byte, so the store file is the whole disk, zeros included). Every flow reads that same store file",
    "legacy: the old tool's two scripts (dice-cyfronet/migratio scripts/openstack2openstack-transfer.sh and "
    "-register.sh, run in that order by lib/migratio/worker/openstack_openstack_migrator.rb). Each script "
    "first runs the same dedupe pass (lines 34-56 / 34-55): `glance image-list` on the source, one ssh to the "
    "head node running `glance image-list | ... | while read id; do glance image-show $id | grep checksum; "
    "done` (lines 42-47, one glance CLI start per destination image in one ssh session), and `glance "
    "image-show UUID` on the source for its checksum (line 50 / 49): it runs twice",
    "legacy transfer: `rsync ${IMAGES_DIR}/${image_uuid} HEAD:/tmp/${image_uuid}` (transfer.sh lines 58-59): "
    "the Glance store file as it is, in its stored format (a qcow2 store sends the qcow2, a raw store sends "
    "the raw file whole: plain rsync, no -S, no -z), with ssh's default cipher",
    "legacy register: `glance image-create --name ... --disk-format FMT --container-format bare --property "
    "source_uuid=... --property source_cs=... < /tmp/${image_uuid}; rm -f /tmp/${image_uuid}` over ssh "
    "(register.sh lines 66-74); the source's glance CLI runs on the worker's machine against site-a",
    "ceiling: the data extents (SEEK_DATA/SEEK_HOLE) of the image file in site-a's store, piped "
    "once into `ssh HEAD 'cat > /dev/null'` (one ssh stream, cipher --ceiling-cipher); nothing is registered. "
    "A raw store file is fully allocated, so its ceiling sends the whole disk",
    "glance-floor: what the destination Glance alone needs to take the image in: `glance image-create "
    "--file` over ssh of a copy already on the head node (copied there beforehand, not timed); no "
    "migration can be faster than max(link time, glance-floor)",
    "latency (cases *-10ms*, *-50ms*): bench/delay_proxy.py in front of the head node's sshd holds each "
    "direction's data for RTT/2 (this kernel has no netem); every ssh connection of every flow to the head "
    "node goes through it (so ssh's channel window over the RTT is real); the Glance API (the benchmark's "
    "setup, `register: via api`) is reached directly. Its cost is the 'proxy overhead' line: the ceiling at "
    "0 ms through the proxy vs. direct",
    "link time: bytes the ceiling sends / the cap rate on capped cases; unshaped, the ceiling's wall time "
    "on the same link at 0 ms (at 10 and 50 ms RTT one ssh stream is held to its window per round trip, "
    "the link is not; bench.suite.relink)",
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


def run_bench(lab: Lab, opts: Options, scratch: Path, log=print) -> dict:
    """Run every case of `opts` on a started lab; `scratch` holds logs, configs and temp files."""
    opts.check()
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = {"started_at": time.strftime("%FT%T%z"), "machine": machine(), "options": asdict(opts),
              "assumptions": ASSUMPTIONS, "images": [], "runs": [], "dedupe": []}
    shim = write_ssh_shim(scratch / "shim")
    source_env = write_source_env(lab, scratch)
    images: list[Image] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_drop_images, lab, images)
        for size in opts.sizes:
            for spec in opts.images:
                images.append(prepare_image(lab, size, *split_spec(spec), opts.data_percent, scratch, log))
                result["images"].append(_image_record(images[-1]))
        dests = {"loopback": loopback(lab, scratch)}
        if any(CASES[c].link == "veth" for c in opts.cases):
            log("== starting site-b in a network namespace behind a veth pair")
            netns = NetnsSite(lab, scratch / "netns", opts.subnet)
            stack.callback(netns.stop)
            dests["veth"] = netns.start()
            result["veth"] = netns.link.describe()
        if opts.proxy_overhead and any(CASES[c].rtt_ms for c in opts.cases):
            result["proxy_overhead"] = measure_overhead(dests, opts, images, scratch, shim, log)
        for name in opts.cases:
            case = CASES[name]
            for image in images:
                if runs_on(case, f"{image.kind}-{image.store}", opts):
                    log(f"== {name}: {image.label} ({image.allocated_bytes / MiB:.0f} MiB stored)")
                    result["runs"].append(run_case(lab, dests[case.link], name, image, opts, source_env,
                                                   scratch / name / image.label.replace(" ", "-"), shim, log))
        if opts.dedupe_counts:
            dest = dests.get("veth") or dests["loopback"]
            log(f"== dedupe cost on the {dest.name} destination")
            result["dedupe"] = run_dedupe(lab, dest, images[0], opts, scratch / "dedupe", shim, log)
    relink(result["runs"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["duration_s"] = round(time.time() - started, 1)
    return result


def _image_record(image: Image) -> dict:
    record = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(image).items()}
    record["label"] = image.label
    return record


def write_source_env(lab: Lab, scratch: Path) -> Path:
    """The environment the old scripts' source-side `glance` ran with (their ~/.creds), for site-a."""
    path = scratch / "source-env.sh"
    path.write_text(HEAD_ENV.format(site="site-a (the legacy flow's source)", url=lab.site_a.glance_url,
                                    token=HEAD_TOKEN, bin=Path(lab.info["venv"]) / "bin"))
    return path


def measure_overhead(dests: dict, opts: Options, images: list[Image], scratch: Path, shim: Path, log) -> dict:
    """The ceiling (unshaped, one ssh stream) direct vs. through the delay proxy at 0 ms."""
    dest = dests.get("veth") or dests["loopback"]
    image = max(images, key=lambda i: i.allocated_bytes)
    directory = scratch / "proxy-overhead"
    ssh_log = directory / "ssh.log"
    directory.mkdir(parents=True, exist_ok=True)
    r = proxy_overhead(dest, image.store_path, shim_env(shim, ssh_log), opts.ceiling_cipher, directory, ssh_log)
    r["image"] = image.label
    log(f"== proxy overhead ({dest.name}, {image.label}): ceiling direct {r['direct_s']:.2f} s, through the "
        f"proxy at 0 ms {r['proxy_s']:.2f} s ({r['overhead'] * 100:+.1f} %)")
    return r


def _drop_images(lab: Lab, images: list[Image]) -> None:
    for image in images:
        with contextlib.suppress(Exception):
            lab.site_a.api().delete_image(image.id)


# --------------------------------------------------------------------------- one case


def run_case(lab, dest: Destination, name: str, image: Image, opts: Options, source_env: Path,
             directory: Path, shim: Path, log) -> dict:
    case: Case = CASES[name]
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        proxy = None
        if case.rtt_ms:
            proxy = stack.enter_context(proxy_for(dest, case.rtt_ms))
            dest = proxied(dest, proxy, directory)
        run = run_flows(lab, dest, name, image, opts, source_env, directory, shim, log)
    if proxy is not None:
        run["proxy"] = {"rtt_ms": case.rtt_ms, "connections": proxy.connections,
                        "peak_held_bytes": proxy.held_peak(), "buffer_bytes": proxy.buffer_bytes}
    return run


def run_flows(lab, dest: Destination, name: str, image: Image, opts: Options, source_env: Path,
              directory: Path, shim: Path, log) -> dict:
    case: Case = CASES[name]
    cap_bytes, cap_kib = (opts.cap_bytes, opts.cap_kib) if case.capped else (None, None)
    run = {"case": name, "link": dest.name, "capped": case.capped, "rtt_ms": case.rtt_ms,
           "cap_mbit": opts.cap_mbit if case.capped else None, "size": image.size, "kind": image.kind,
           "store": image.store, "image": image.label, "image_id": image.id, "flows": {}}
    ssh_log = directory / "ssh.log"
    env = shim_env(shim, ssh_log)
    keep = {i["id"] for i in dest.api().list_images()}
    if "ceiling" in opts.flows:
        r = flows.ceiling(dest, image.store_path, cap_bytes, env, opts.ceiling_cipher,
                          Bytes(ssh_log, dest.link), directory)
        run["flows"]["ceiling"] = r
        log(f"   ceiling  {_line(r)}")
    if "glance-floor" in opts.flows:
        r = flows.ingest_floor(dest, image.store_path, image.store, env)
        r.update(bytes_sent=0, bytes_source="none (on the head node)")
        run["flows"]["glance-floor"] = r
        log(f"   glance-floor {r['wall_s']:5.1f} s (the destination Glance taking the {image.store} in)")
    if "legacy" in opts.flows:
        r = flows.legacy(dest, source_env, image.id, image.store_path, image.store, cap_kib, env,
                         Bytes(ssh_log, dest.link), directory)
        run["flows"]["legacy"] = r
        dest.delete_images(keep)
        log(f"   legacy   {_line(r)} (dedupe x2 {r['dedupe_s']:.1f} s, transfer {r['transfer_s']:.1f} s, "
            f"register {r['register_s']:.1f} s)")
    if "migratio" in opts.flows:
        conf = dest.site_conf(**opts.site_extra(case.capped))
        run["flows"]["migratio"] = r = run_migratio(lab, conf, dest, image, directory, env, ssh_log)
        dest.delete_images(keep)
        log(f"   migratio {_line(r)}; steps {r['steps']}; already present: "
            f"{r['already_present']['worker_s']:.2f} s (via api {r['already_present_api']['worker_s']:.2f} s)")
    run["ratios"] = ratios(run["flows"], cap_bytes)
    return run


def run_migratio(lab, site_conf: dict, dest: Destination, image: Image, directory: Path, env: dict,
                 ssh_log: Path) -> dict:
    """The migration, then the same job again ('already present'), via ssh and via the Glance API."""
    config = write_config(lab, directory / "migratio", site_conf)
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


def ratios(results: dict, cap_bytes: float | None = None) -> dict:
    """migratio against the ceiling, against max(link time, glance floor), and legacy against migratio."""
    wall = {name: r["wall_s"] for name, r in results.items()}
    out = {}
    if "migratio" in wall and "ceiling" in wall:
        out["migratio/ceiling"] = round(wall["migratio"] / wall["ceiling"], 2)
        link = results["ceiling"]["payload_bytes"] / cap_bytes if cap_bytes else wall["ceiling"]
        out["link_s"] = round(link, 2)
        if "glance-floor" in wall:
            out["migratio/max(ceiling,glance-floor)"] = round(
                wall["migratio"] / max(wall["ceiling"], wall["glance-floor"]), 2)
            out["migratio/max(link,glance-floor)"] = round(wall["migratio"] / max(link, wall["glance-floor"]), 2)
    if "legacy" in wall and "migratio" in wall:
        out["legacy/migratio"] = round(wall["legacy"] / wall["migratio"], 2)
    return out


def relink(runs: list[dict]) -> None:
    """Unshaped cases with an RTT: their link time is the same link's and image's ceiling at 0 ms
    (one ssh stream over the RTT is held to its window per round trip; the link is not), and
    one-stream-ceiling/migratio says how much faster than one stream migratio was."""
    base = {(CASES[r["case"]].link, r["image"]): r for r in runs if not r["capped"] and not r.get("rtt_ms")}
    for run in runs:
        ref, wall = base.get((CASES[run["case"]].link, run["image"])), {n: f["wall_s"] for n, f in run["flows"].items()}
        if run["capped"] or not run.get("rtt_ms") or not ref or "ceiling" not in ref["flows"]:
            continue
        link = ref["flows"]["ceiling"]["wall_s"]
        run["ratios"].update(link_s=round(link, 2), link_from=f"{ref['case']} ceiling")
        if "migratio" in wall and "glance-floor" in wall:
            bound = max(link, wall["glance-floor"])
            run["ratios"]["migratio/max(link,glance-floor)"] = round(wall["migratio"] / bound, 2)
        if "migratio" in wall and "ceiling" in wall:
            run["ratios"]["one-stream-ceiling/migratio"] = round(wall["ceiling"] / wall["migratio"], 2)


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

"""A catalogue move: many small images through a few real workers, against the bound that the
one-stream ceiling and the per-job fixed cost set (issue 16, part 3).

    .venv/bin/python -m bench.catalogue [--root .lab] [--images 100] [--workers 2] [--reuse-lab]

Measured in one run, on the lab as it is (loopback): the ceiling rate of one ssh stream to the
head node (`cat > /dev/null`), the fixed cost (worker time, RQ started_at -> ended_at, of a
near-empty image, median of a few), then N varied tiny qcow2s enqueued at once to W
`migratio worker` processes. bound = bytes / ceiling rate + N x fixed cost / W; ratio =
wall / bound (wall: first enqueue to last end, RQ's timestamps). `python -m bench.run
--catalogue N` stores the same dict under result["catalogue"].
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from rq.job import Job

from bench import report
from bench.migratio_flow import DEST_SITE, ENDED, WorkerProcess, step_times
from migratio.queue.enqueue import enqueue_migration
from support.lab.config import write_migratio_config
from support.lab.images import MiB, make_qcow2
from support.lab.lab import Lab

CEILING_BYTES = 256 * MiB
CEILING_CIPHER = "aes128-gcm@openssh.com"  # (migratio's first choice, openssh.FAST_CIPHERS)
FIXED_RUNS = 3
RETRIES = 3
Log = Callable[[str], None]


def run_catalogue(lab: Lab, scratch: Path, images: int = 100, workers: int = 2, log: Log = print) -> dict:
    """The catalogue figures (see the module doc); scratch holds the images, config and logs."""
    scratch.mkdir(parents=True, exist_ok=True)
    # retried at once: the lab's Glance (sqlite) sometimes answers a concurrent upload with HTTP 500
    config = write_migratio_config(lab, scratch / "config", site_b={}, retries=RETRIES, retry_intervals=[0],
                                   log_level="INFO")
    env = dict(os.environ)
    log(f"== catalogue: ceiling of one ssh stream ({CEILING_BYTES // MiB} MiB)")
    rate = ceiling_rate(lab)
    log(f"== catalogue: {images} tiny images to site-a")
    ids, sizes = upload_images(lab, scratch / "images", images)
    pool = [WorkerProcess(config, env, scratch / f"worker{i}.log") for i in range(max(1, workers))]
    try:
        for worker in pool:
            worker.start()
        log(f"== catalogue: fixed cost (near-empty image, median of {FIXED_RUNS})")
        fixed, fixed_steps = fixed_cost(lab, pool[0], scratch / "images")
        log(f"== catalogue: {images} jobs through {len(pool)} workers")
        wall, jobs = run_jobs(pool[0], ids)
    finally:
        for worker in pool:
            worker.stop()
    steps = [step_times(pool[0].config.log_dir, job.id) for job in jobs]
    total = sum(sizes)
    bound = total / rate + images * fixed / len(pool)
    return {"images": images, "workers": len(pool), "wall_s": round(wall, 2), "bytes": total,
            "ceiling_rate_bps": round(rate), "fixed_cost_s": round(fixed, 3), "bound_s": round(bound, 2),
            "ratio": round(wall / bound, 3), "per_step_s": mean_steps(steps),
            "fixed_cost_steps_s": fixed_steps, "worker_s_mean": round(statistics.mean(_worker_s(j) for j in jobs), 3),
            "retried": sum(1 for job in jobs if (job.retries_left or 0) < RETRIES)}


def ceiling_rate(lab: Lab) -> float:
    """Bytes/s of one ssh stream into `cat > /dev/null` on the head node (login included)."""
    argv = lab.head_node.ssh_command("cat > /dev/null")
    argv[1:1] = ["-o", f"Ciphers={CEILING_CIPHER}", "-o", "Compression=no"]
    block = random.Random(0).randbytes(4 * MiB)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    for _ in range(CEILING_BYTES // len(block)):
        proc.stdin.write(block)
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"the ceiling's ssh failed (exit {proc.returncode})")
    return CEILING_BYTES / (time.monotonic() - start)


def upload_images(lab: Lab, directory: Path, count: int) -> tuple[list[str], list[int]]:
    """`count` varied tiny qcow2s (0-6 MiB of data in 32-256 MiB virtual disks) uploaded to site-a."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(16)
    shapes = [(rng.choice([32, 64, 128, 256]), rng.randint(0, 6)) for _ in range(count)]

    def one(i: int) -> tuple[str, int]:
        virtual, data = shapes[i]
        path = make_qcow2(directory / f"cat-{i:03d}.qcow2", f"{virtual}M", min(data, virtual), seed=1000 + i)
        image = lab.upload_image("site-a", path, f"catalogue-{i:03d}", os_distro=rng_name(i))
        size = path.stat().st_size
        path.unlink()
        return image["id"], size

    done = [one(i) for i in range(count)]  # one at a time: the lab's Glance (sqlite) fails parallel uploads
    return [d[0] for d in done], [d[1] for d in done]


def rng_name(i: int) -> str:
    return ("alpine", "debian", "ubuntu", "rocky", "fedora")[i % 5]


def fixed_cost(lab: Lab, worker: WorkerProcess, directory: Path) -> tuple[float, dict[str, float]]:
    """Median worker time of a near-empty image (no data, 16 MiB virtual) and its mean step times."""
    runs = []
    for i in range(FIXED_RUNS):
        path = make_qcow2(directory / f"empty-{i}.qcow2", "16M", 0, seed=i)
        image = lab.upload_image("site-a", path, f"catalogue-empty-{i}")
        runs.append(worker.migrate(image["id"]))
    return statistics.median(r["worker_s"] for r in runs), mean_steps([r["steps"] for r in runs])


def run_jobs(worker: WorkerProcess, ids: list[str], timeout: float = 3600) -> tuple[float, list[Job]]:
    """Enqueue every image at once; (first enqueue -> last end in seconds, the ended jobs)."""
    jobs = [enqueue_migration(worker.queue, worker.config, image_id, DEST_SITE) for image_id in ids]
    deadline = time.monotonic() + timeout
    while not all(job.get_status(refresh=True) in ENDED for job in jobs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the catalogue did not end within {timeout:.0f} s")
        time.sleep(0.2)
    jobs = [Job.fetch(job.id, connection=worker.redis) for job in jobs]
    failed = [job for job in jobs if job.get_status() != "finished"]
    if failed:
        raise RuntimeError(f"{len(failed)} catalogue jobs failed, e.g. {failed[0].id}: {failed[0].meta.get('error')}")
    start = min(job.enqueued_at for job in jobs)
    return (max(job.ended_at for job in jobs) - start).total_seconds(), jobs


def mean_steps(runs: list[dict[str, float]]) -> dict[str, float]:
    names = dict.fromkeys(name for run in runs for name in run)
    return {name: round(statistics.mean(run.get(name, 0.0) for run in runs), 3) for name in names}


def _worker_s(job: Job) -> float:
    return (job.ended_at - job.started_at).total_seconds()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".lab", help="lab root (default .lab)")
    p.add_argument("--run-dir", help="its lab run dir (default ROOT/catalogue-run)")
    p.add_argument("--reuse-lab", action="store_true", help="reuse a running lab there and leave it running")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    run_dir = Path(args.run_dir).resolve() if args.run_dir else root / "catalogue-run"
    lab = Lab(root, run_dir)
    try:
        lab.start(reuse=args.reuse_lab)
        result = run_catalogue(lab, run_dir / "catalogue", args.images, args.workers)
    finally:
        if not args.reuse_lab:
            lab.stop()
    print(json.dumps(result, indent=2))
    print("\n".join(report.catalogue_table({"catalogue": result})))
    return 0


if __name__ == "__main__":
    sys.exit(main())

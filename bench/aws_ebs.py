"""Benchmark of the ebs-direct data path against moto_server (issue 8, part 3).

For sparse raw images of several sizes (same data fraction) it reports, per run in its own
process: blocks sent vs. allocated blocks (zero blocks must be skipped), wall time and
throughput with 1 vs. N blocks in flight, and the peak RSS of the writing process.

    .venv/bin/python bench/aws_ebs.py [--moto-url URL] [--sizes-mib 256,1024] [--in-flight 1,8]
                                     [--data-fraction 0.15] [--out bench-aws-ebs.json]

Without --moto-url it starts its own moto_server on a free loopback port. moto keeps every
block in its own memory and answers from one Python process: absolute rates say little about
AWS; compare the ratios within one run.
"""

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MiB = 1024 * 1024
EXTENT = 4 * MiB  # data is written in runs of this size, at random places


def make_image(path: Path, size: int, fraction: float, seed: int) -> dict:
    """A sparse raw file: `fraction` of it random data in 4 MiB runs, plus an 8 MiB run of written zeros."""
    rng = random.Random(seed)
    slots = list(range(size // EXTENT))
    chosen = sorted(rng.sample(slots, max(1, int(len(slots) * fraction))))
    with open(path, "wb") as f:
        f.truncate(size)
        for slot in chosen:
            os.pwrite(f.fileno(), os.urandom(EXTENT), slot * EXTENT)
        free = [s for s in slots if s not in chosen]
        if len(free) >= 2:
            os.pwrite(f.fileno(), bytes(2 * EXTENT), free[len(free) // 2] * EXTENT)
    return {"size": size, "data_bytes": len(chosen) * EXTENT, "disk_usage": os.stat(path).st_blocks * 512}


def one_run(args) -> None:
    """Child process: write the image into a new snapshot, print stats as JSON."""
    import logging

    from migratio.aws import ebs_direct
    from migratio.aws.clients import AwsClients
    from migratio.conf.sites import AwsOptions

    site = AwsOptions(region="eu-west-1", endpoint_url=args.moto_url, blocks_in_flight=args.one_in_flight)
    aws = AwsClients.connect(site)
    image = Path(args.one)
    snapshot = ebs_direct.start_snapshot(aws, ebs_direct.volume_gib(image.stat().st_size),
                                         f"bench-{os.getpid()}-{time.time_ns()}", "bench", [],
                                         logging.getLogger("bench"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    stats = ebs_direct.BlockWriter(aws.ebs, snapshot, args.one_in_flight).write(image)
    seconds = time.monotonic() - start
    ebs_direct.complete_snapshot(aws, snapshot, stats.blocks_sent, interval=1, timeout=600)
    listed = aws.ebs.list_snapshot_blocks(SnapshotId=snapshot)["Blocks"]  # moto returns all at once
    aws.ec2.delete_snapshot(SnapshotId=snapshot)
    print(json.dumps({
        "blocks_total": stats.blocks_total, "blocks_allocated": stats.blocks_allocated,
        "blocks_zero_skipped": stats.blocks_zero, "blocks_sent": stats.blocks_sent,
        "blocks_in_snapshot": len(listed), "seconds": round(seconds, 2),
        "mib_per_s": round(stats.bytes_sent / MiB / seconds, 1) if seconds else None,
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def start_moto(directory: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "moto_server"
    log = open(directory / "moto.log", "ab")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=5).close()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"moto_server exited: see {directory / 'moto.log'}")
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("moto_server did not answer in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moto-url")
    parser.add_argument("--sizes-mib", default="256,1024")
    parser.add_argument("--in-flight", default="1,8")
    parser.add_argument("--data-fraction", type=float, default=0.15)
    parser.add_argument("--out", default="bench-aws-ebs.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-in-flight", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_EC2_METADATA_DISABLED": "true"}
    if args.one:
        return one_run(args)
    with tempfile.TemporaryDirectory(prefix="bench-aws-ebs-") as tmp:
        directory = Path(tmp)
        proc, url = (None, args.moto_url) if args.moto_url else start_moto(directory)
        try:
            results = []
            for size_mib in map(int, args.sizes_mib.split(",")):
                image = directory / f"image-{size_mib}.raw"
                facts = make_image(image, size_mib * MiB, args.data_fraction, seed=size_mib)
                for in_flight in map(int, args.in_flight.split(",")):
                    out = subprocess.run([sys.executable, __file__, "--moto-url", url, "--one", str(image),
                                          "--one-in-flight", str(in_flight)], env=env, check=True,
                                         capture_output=True, text=True).stdout
                    row = {"size_mib": size_mib, "in_flight": in_flight, **facts, **json.loads(out)}
                    results.append(row)
                    print(f"{size_mib:6d} MiB  in-flight {in_flight:2d}: sent {row['blocks_sent']:5d} of "
                          f"{row['blocks_allocated']:5d} allocated blocks ({row['blocks_zero_skipped']} zero "
                          f"skipped, {row['blocks_total']} in volume, {row['blocks_in_snapshot']} in snapshot), "
                          f"{row['seconds']:6.2f} s, {row['mib_per_s']} MiB/s, peak RSS {row['peak_rss_mib']} MiB",
                          flush=True)
                image.unlink()
        finally:
            if proc:
                proc.terminate()
                proc.wait(timeout=30)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()

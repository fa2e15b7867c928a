"""`make bench`: migratio against the copy ceiling and the old tool's flow, on the lab.

    .venv/bin/python -m bench.run [--root .lab] [--sizes 2G] [--quick] [--cap-mbit 200]
                                  [--cases veth-capped,veth-50ms,...] [--images realistic-qcow2,...]
                                  [--streams N|auto] [--subnet 10.231.0.0/30] [--aws]
                                  [--catalogue 100] [--catalogue-workers 2]

Cases: `veth-*` put site-b (its head node sshd and its Glance) in a network namespace behind a
veth pair (10.231.0.1/30 <-> 10.231.0.2/30, made and removed by the benchmark; needs root),
`loopback` uses the lab as it is. `*-capped` cap every flow at --cap-mbit at the transfer
itself; `*-10ms*`, `*-50ms*` put bench.delay_proxy (that RTT) in front of the head node's sshd.
Images: <realistic|random>-<qcow2|raw>, the kind of data and the format site-a's Glance stores
it in; raw-store images run only on the 0 ms cases (--raw-store-rtts).
Writes bench/results/<timestamp>.json and bench/results/latest.md, prints the table.
Timings are this machine's, under whatever else runs on it: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import catalogue, report
from bench.cases import CASES, FLOWS, IMAGES, Options
from bench.suite import run_bench
from support.lab.lab import Lab

HERE = Path(__file__).resolve().parent

QUICK = dict(sizes=["512M"], cases=["veth-capped", "veth-50ms-capped", "veth-50ms"],
             images=["realistic-qcow2", "random-qcow2", "realistic-raw"], dedupe_counts=[10, 100],
             dedupe_sample=5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".lab", help="lab root (default .lab)")
    p.add_argument("--run-dir", help="the benchmark's lab run dir (default ROOT/bench-run)")
    p.add_argument("--reuse-lab", action="store_true", help="reuse a running benchmark lab, leave it running")
    p.add_argument("--sizes", help="virtual sizes of the test images (default 2G)")
    p.add_argument("--data-percent", type=float, default=15.0, help="real data in each image (default 15)")
    p.add_argument("--cap-mbit", type=float, default=200.0, help="cap of the capped cases (default 200)")
    p.add_argument("--cases", help=f"comma list of {', '.join(CASES)} (default: the veth ones)")
    p.add_argument("--images", help=f"comma list of {', '.join(IMAGES)} (default realistic-qcow2,random-qcow2,"
                                    "realistic-raw)")
    p.add_argument("--raw-store-rtts", help="RTTs (ms) at which raw-store images run (default 0)")
    p.add_argument("--streams", help="N|auto: migratio's site conf `streams` (default: not written, the site "
                                     "default)")
    p.add_argument("--no-proxy-overhead", action="store_true", help="skip measuring the proxy's overhead")
    p.add_argument("--flows", help=f"comma list of {', '.join(FLOWS)} (default all)")
    p.add_argument("--dedupe-counts", help="images on the destination for the dedupe cost (default 10,100,1000; "
                                           "'' to skip)")
    p.add_argument("--dedupe-sample", type=int, help="legacy image-show calls measured per count, the rest "
                                                     "extrapolated (default 25)")
    p.add_argument("--ceiling-cipher", default="aes128-gcm@openssh.com")
    p.add_argument("--subnet", help="a /30 for the veth pair (default: a free one of 10.231.0.0/16)")
    p.add_argument("--quick", action="store_true", help="512M images, veth-capped, veth-50ms(-capped), "
                                                        "dedupe 10,100: a few minutes")
    p.add_argument("--aws", action="store_true", help="also run bench/aws_ebs.py (ebs-direct against moto)")
    p.add_argument("--catalogue", type=int, help="small images of the catalogue case (bench/catalogue.py; "
                                                 "default 100, 20 with --quick, 0 to skip)")
    p.add_argument("--catalogue-workers", type=int, default=2, help="workers of the catalogue case (default 2)")
    p.add_argument("--out", default=str(HERE / "results"), help="results dir (default bench/results)")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    base = Options(**QUICK) if args.quick else Options()
    if args.sizes:
        base.sizes = _list(args.sizes)
    if args.cases:
        base.cases = _list(args.cases)
    if args.flows:
        base.flows = _list(args.flows)
    if args.images:
        base.images = _list(args.images)
    if args.raw_store_rtts:
        base.raw_store_rtts = [float(x) for x in _list(args.raw_store_rtts)]
    base.streams, base.proxy_overhead = args.streams, not args.no_proxy_overhead
    if args.dedupe_counts is not None:
        base.dedupe_counts = [int(n) for n in _list(args.dedupe_counts)]
    if args.dedupe_sample is not None:
        base.dedupe_sample = args.dedupe_sample
    base.data_percent, base.cap_mbit = args.data_percent, args.cap_mbit or None
    base.ceiling_cipher, base.subnet = args.ceiling_cipher, args.subnet
    base.check()
    return base


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def run_aws(scratch: Path) -> dict | list:
    out = scratch / "aws-ebs.json"
    subprocess.run([sys.executable, str(HERE / "aws_ebs.py"), "--out", str(out)], check=True)
    return json.loads(out.read_text())


def write_results(result: dict, out_dir: Path) -> tuple[Path, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    result["targets"] = report.targets(result)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = report.markdown(result)
    (out_dir / "latest.md").write_text(text)
    return path, text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = options(args)
    root = Path(args.root).resolve()
    run_dir = Path(args.run_dir).resolve() if args.run_dir else root / "bench-run"
    scratch = run_dir / "bench"
    lab = Lab(root, run_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks and atexit
    if not args.reuse_lab:
        atexit.register(lab.stop)
    print(f"== starting the benchmark's lab in {run_dir}", flush=True)
    try:
        lab.start(reuse=args.reuse_lab)
        shutil.rmtree(scratch, ignore_errors=True)
        result = run_bench(lab, opts, scratch, log=lambda line: print(line, flush=True))
        images = args.catalogue if args.catalogue is not None else 20 if args.quick else 100
        if images > 0:
            print(f"== catalogue: {images} small images, {args.catalogue_workers} workers", flush=True)
            result["catalogue"] = catalogue.run_catalogue(lab, scratch / "catalogue", images, args.catalogue_workers,
                                                          log=lambda line: print(line, flush=True))
        if args.aws:
            if (HERE / "aws_ebs.py").exists():
                print("== AWS ebs-direct (bench/aws_ebs.py)", flush=True)
                result["aws"] = run_aws(scratch)
            else:
                print("== --aws: bench/aws_ebs.py is not there, skipped", flush=True)
    finally:
        if not args.reuse_lab:
            lab.stop()
    path, text = write_results(result, Path(args.out))
    print("\n" + text)
    print(f"results: {path} and {Path(args.out) / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

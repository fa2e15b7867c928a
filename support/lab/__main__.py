"""The lab's command line (stdlib only; run from the repository root)::

    python3 -m support.lab start|stop|status [--root .lab] [--run-dir DIR] [--fresh]
    python3 -m support.lab upload-image --site site-a --name demo [--size 1G --data-mib 64]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zlib
from pathlib import Path

from support.lab.images import GlanceError, make_qcow2
from support.lab.lab import SITES, Lab
from support.lab.services import REPO, LabError


def _print_summary(lab: Lab) -> None:
    head = lab.head_node
    how = "reused the running lab" if lab.reused else f"started in {lab.info['timings']}"
    print(f"lab {how} ({lab.info_file})")
    for name, site in lab.sites.items():
        print(f"  {name}: {site.glance_url}  images in {site.images_dir}")
    print(f"  redis: {lab.redis_url}")
    print(f"  head node ({head.site}): ssh -p {head.port} -i {head.key_file} "
          f"-o UserKnownHostsFile={head.known_hosts} {head.user}@{head.host}")
    print(f"    then: . {head.env_file} && glance image-list   (staging: {head.staging_dir})")
    print(f"stop it with: cd {REPO} && python3 -m support.lab stop --root {lab.root}"
          + (f" --run-dir {lab.run_dir}" if lab.run_dir != lab.root / "run" else ""))


def _cmd_status(lab: Lab) -> int:
    health = lab.health()
    if not health:
        print(f"lab not running ({lab.info_file} missing)")
        return 1
    for name, ok in health.items():
        print(f"  {name:7} {'running' if ok else 'DOWN'}  pid {lab.pids.get(name)}")
    print("lab running" if all(health.values()) else "lab degraded")
    return 0 if all(health.values()) else 1


def _cmd_upload(lab: Lab, args) -> int:
    if not lab.attach():
        raise LabError(f"no lab running ({lab.info_file} missing): run start first")
    props = dict(p.split("=", 1) for p in args.property)
    path = Path(args.file) if args.file else make_qcow2(
        lab.run_dir / f"{args.name}.qcow2", args.size, args.data_mib,
        seed=zlib.crc32(args.name.encode()))
    image = lab.upload_image(args.site, path, args.name, **props)
    print(image["id"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m support.lab", description=Lab.__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "upload-image"])
    parser.add_argument("--root", default=".lab", help="lab root (default: .lab)")
    parser.add_argument("--run-dir", help="run dir (default: ROOT/run)")
    parser.add_argument("--fresh", action="store_true", help="start: never reuse")
    up = parser.add_argument_group("upload-image")
    up.add_argument("--site", default="site-a", choices=SITES)
    up.add_argument("--name", default="lab-image")
    up.add_argument("--file", help="upload this file instead of making a qcow2")
    up.add_argument("--size", default="1G", help="virtual size of the made qcow2")
    up.add_argument("--data-mib", type=int, default=16, help="MiB of data in it")
    up.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    lab = Lab(args.root, args.run_dir)
    try:
        if args.command == "start":
            _print_summary(lab.start(reuse=not args.fresh))
        elif args.command == "stop":
            lab.stop()
            print(f"lab stopped ({lab.run_dir})")
        elif args.command == "status":
            return _cmd_status(lab)
        else:
            return _cmd_upload(lab, args)
    except BrokenPipeError:  # output piped into `head`
        return 0
    except (LabError, GlanceError, OSError, subprocess.CalledProcessError) as e:
        first, _, details = str(e).partition("\n")
        print(f"lab {args.command} failed: {first}", file=sys.stderr)
        if details:
            print(details, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

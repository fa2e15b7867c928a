"""`make demo`: a real migration site-a -> site-b on the local lab, end to end.

Run from the repository root: ``python -m support.demo [--root .lab]``.

Starts (or reuses) the lab, puts a real qcow2 image (made with qemu-img: real data and holes)
into site-a, starts a real `migratio worker`, enqueues the migration with `migratio migrate
--wait` (which prints progress) and prints the site-b image id and its verified hash.
"""

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from support.lab.config import write_migratio_config
from support.lab.images import make_qcow2
from support.lab.lab import Lab
from support.lab.services import REPO

DEMO_IMAGE = "migratio-demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=str(REPO / ".lab"))
    parser.add_argument("--size", default="2G", help="virtual size of the demo image")
    parser.add_argument("--data-mib", type=int, default=300, help="MiB of real data in it")
    args = parser.parse_args()
    root = Path(args.root).resolve()

    print("== starting the lab (two Glance sites, site-b's head node over ssh, Redis)")
    lab = Lab(root).start(reuse=True)
    config = write_migratio_config(lab, root / "demo")
    image = demo_image(lab, root, args.size, args.data_mib)
    print(f"== site-a image {image['id']}: {image['name']}, {image['disk_format']}, "
          f"{image['size'] / 2**20:.0f} MiB file")

    migratio = [str(Path(sys.executable).parent / "migratio"), "--config", str(config)]
    worker = subprocess.Popen(migratio + ["worker"], stderr=open(root / "demo" / "worker.log", "ab"))
    try:
        print("== worker started (log: .lab/demo/worker.log); enqueueing the migration")
        code = subprocess.call(migratio + ["migrate", image["id"], "site-b", "--wait"])
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        worker.wait(timeout=120)
    if code != 0:
        print("demo: the migration failed; see .lab/demo/log/migratio.log", file=sys.stderr)
        return code
    return show_result(lab, image)


def demo_image(lab, root: Path, size: str, data_mib: int) -> dict:
    api = lab.site_a.api()
    for existing in api.list_images(name=DEMO_IMAGE):
        if existing["status"] == "active":
            return existing
    path = root / "demo" / "demo.qcow2"
    print(f"== making a {size} qcow2 with {data_mib} MiB of data and uploading it to site-a")
    make_qcow2(path, size, data_mib)
    try:
        return lab.upload_image("site-a", path, DEMO_IMAGE, os_distro="demo")
    finally:
        path.unlink(missing_ok=True)


def show_result(lab, source: dict) -> int:
    found = [i for i in lab.site_b.api().list_images(source_uuid=source["id"]) if i["status"] == "active"]
    if len(found) != 1:
        print(f"demo: expected one active copy on site-b, found {len(found)}", file=sys.stderr)
        return 1
    copy = found[0]
    same = copy["os_hash_value"] == source["os_hash_value"]
    print(f"== site-b image {copy['id']} ({copy['name']}), status {copy['status']}")
    print(f"   source_t={copy.get('source_t')} source_uuid={copy.get('source_uuid')} "
          f"source_cs={copy.get('source_cs')}")
    print(f"   sha512 {copy['os_hash_value'][:32]}... {'matches' if same else 'DIFFERS FROM'} site-a's")
    print("== the lab is still running; stop it with: make demo-stop")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

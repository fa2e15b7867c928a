"""Test images for the lab: real qcow2 files and a tiny stdlib Glance v2 client.

Stdlib only (plus the ``qemu-img`` command). Nothing here reads a whole image
into memory.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

MiB = 1024 * 1024
CHUNK = MiB

_SIZE_SUFFIXES = {"": 1, "B": 1, "K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 ** 4}


def parse_size(size: int | str) -> int:
    """``4096``, ``"64M"``, ``"2G"``, ``"1.5GiB"`` -> bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().removesuffix("IB").removesuffix("B")
    number = text.rstrip("KMGT")
    return int(float(number) * _SIZE_SUFFIXES[text[len(number):]])


# --------------------------------------------------------------------------- qcow2


def make_qcow2(path: Path | str, virtual_size: int | str, data_mib: int,
               seed: int = 0) -> Path:
    """Make a real qcow2 at ``path`` with ``data_mib`` MiB of data and holes.

    The data (pseudo-random bytes from ``seed``, so incompressible and
    reproducible) is written in 1 MiB extents spread evenly over the virtual
    disk into a sparse raw file, which ``qemu-img convert`` turns into a qcow2
    that only stores the data extents. Streams: never holds more than 1 MiB.
    """
    path = Path(path)
    size = parse_size(virtual_size)
    if size % CHUNK or data_mib * CHUNK > size:
        raise ValueError(f"virtual size {size} must be whole MiB and hold {data_mib} MiB")
    chunks = size // CHUNK
    stride = chunks // data_mib if data_mib else chunks
    rng = random.Random(seed)
    raw = path.with_name(path.name + ".raw.tmp")
    try:
        with open(raw, "wb") as f:
            f.truncate(size)
            for i in range(data_mib):
                f.seek(i * stride * CHUNK)
                f.write(rng.randbytes(CHUNK))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)],
                       check=True, capture_output=True)
    finally:
        raw.unlink(missing_ok=True)
    return path


def qemu_img_info(path: Path | str) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def file_hashes(path: Path | str) -> dict:
    """size, md5 (Glance ``checksum``) and sha512 (Glance ``os_hash_value``)."""
    md5, sha512, size = hashlib.md5(), hashlib.sha512(), 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            md5.update(block)
            sha512.update(block)
            size += len(block)
    return {"size": size, "md5": md5.hexdigest(), "sha512": sha512.hexdigest()}


# --------------------------------------------------------------------------- Glance API


class GlanceError(RuntimeError):
    def __init__(self, method: str, url: str, status: int, body: str):
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:500]}")
        self.status = status


_RETRY_STATUSES = (502, 503, 504)


class GlanceAPI:
    """Minimal Glance v2 client over ``urllib`` for lab sites.

    Requests are retried on connection errors and 502/503/504 (a lab site may
    still be booting or be restarted by a test).
    """

    def __init__(self, url: str, token: str = "lab-token", timeout: float = 120.0,
                 retries: int = 8):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                ok=(200, 201, 204)) -> tuple[int, bytes]:
        """Send one request; ``body`` may be bytes, a dict (JSON) or a callable
        returning a fresh file object (re-opened on every retry)."""
        url = self.url + path
        hdrs = {"X-Auth-Token": self.token, **(headers or {})}
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in range(self.retries + 1):
            data = body() if callable(body) else body
            req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")
                if e.code in ok:
                    return e.code, text.encode()
                if e.code not in _RETRY_STATUSES or attempt == self.retries:
                    raise GlanceError(method, url, e.code, text) from None
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
                if attempt == self.retries:
                    raise
            finally:
                if hasattr(data, "close"):
                    data.close()
            time.sleep(min(0.5 * 2 ** attempt, 10))
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body=None, **kw) -> dict:
        _, data = self.request(method, path, body, **kw)
        return json.loads(data) if data else {}

    # -- images
    def create_image(self, name: str, disk_format: str = "qcow2",
                     container_format: str = "bare", **properties) -> dict:
        """POST /v2/images; extra keyword arguments become image properties."""
        return self.json("POST", "/v2/images", {
            "name": name, "disk_format": disk_format,
            "container_format": container_format, **properties})

    def upload(self, image_id: str, path: Path | str) -> None:
        """PUT /v2/images/ID/file, streaming the file."""
        size = os.path.getsize(path)
        def body():  # re-opened for every attempt, closed by request()
            return open(path, "rb")

        self.request("PUT", f"/v2/images/{image_id}/file", body,
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(size)})

    def get_image(self, image_id: str) -> dict | None:
        try:
            return self.json("GET", f"/v2/images/{image_id}")
        except GlanceError as e:
            if e.status == 404:
                return None
            raise

    def list_images(self, **filters) -> list[dict]:
        """All images (follows pagination); filters as Glance query parameters."""
        images, path = [], "/v2/images?" + urllib.parse.urlencode({"limit": 100, **filters})
        while path:
            page = self.json("GET", path)
            images += page["images"]
            path = page.get("next")
        return images

    def delete_image(self, image_id: str) -> bool:
        """DELETE the image; False if it did not exist."""
        status, _ = self.request("DELETE", f"/v2/images/{image_id}", ok=(204, 404))
        return status == 204

    def download(self, image_id: str, dest: Path | str) -> Path:
        """Stream the image data to ``dest``."""
        req = urllib.request.Request(f"{self.url}/v2/images/{image_id}/file",
                                     headers={"X-Auth-Token": self.token})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp, open(dest, "wb") as f:
            while block := resp.read(CHUNK):
                f.write(block)
        return Path(dest)

    def wait_status(self, image_id: str, status: str = "active",
                    timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            image = self.get_image(image_id) or {}
            if image.get("status") == status:
                return image
            if image.get("status") in ("killed", "deleted", None) or time.monotonic() > deadline:
                raise RuntimeError(f"image {image_id} is {image.get('status')!r}, "
                                   f"wanted {status!r}")
            time.sleep(0.5)

    def upload_image(self, path: Path | str, name: str, disk_format: str = "qcow2",
                     container_format: str = "bare", **properties) -> dict:
        """Create an image, upload ``path`` into it and wait until it is active."""
        image = self.create_image(name, disk_format, container_format, **properties)
        try:
            self.upload(image["id"], path)
            return self.wait_status(image["id"], "active")
        except BaseException:
            self.delete_image(image["id"])
            raise

"""Test doubles for what the pipeline talks to: status sinks and the destination Glance."""

import hashlib
import uuid
from pathlib import Path

from migratio.errors import ImageNotFound
from migratio.pipeline.status import JobInfo


class Lines:
    """The in-memory StatusSink: every line emitted, in order, with the job it was for."""

    def __init__(self) -> None:
        self.emitted: list[tuple[JobInfo, str]] = []

    def emit(self, job: JobInfo, text: str) -> None:
        self.emitted.append((job, text))

    @property
    def lines(self) -> list[str]:
        return [text for _, text in self.emitted]


class FileLines:
    """A StatusSink appending each line to a file: for jobs run in RQ's forked work-horse, whose
    memory the test never sees (a job run in the test's own process uses Lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, job: JobInfo, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(text + "\n")

    @property
    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


PROJECT = "project-b"  # the project the destination registers into (the owner of our copies)


class MemoryGlance:
    """The destination's images in a dict; same surface as migratio.openstack.glance.GlanceClient."""

    def __init__(self, images=(), store_hash="sha512", corrupt=False):
        self.images = {i["id"]: dict(i) for i in images}
        self.store_hash, self.corrupt = store_hash, corrupt
        self.deleted, self.finds, self.filters = [], 0, []

    def find(self, filters):
        self.finds += 1
        self.filters.append(dict(filters))
        return [dict(i) for i in self.images.values() if all(i.get(k) == v for k, v in filters.items())]

    def project(self):
        return PROJECT

    def show(self, image_id):
        if image_id not in self.images:
            raise ImageNotFound(f"image {image_id} not found")
        return dict(self.images[image_id])

    def delete(self, image_id):
        self.deleted.append(image_id)
        return self.images.pop(image_id, None) is not None

    def create(self, name, disk_format, container_format, properties, min_disk=0, min_ram=0):
        image_id = str(uuid.uuid4())
        self.images[image_id] = {"id": image_id, "name": name, "status": "queued", "disk_format": disk_format,
                                 "owner": PROJECT, **properties}
        return image_id

    def upload(self, image_id, path, progress=None):
        data = path.read_bytes() + (b"!" if self.corrupt else b"")
        self.images[image_id].update(status="active", size=len(data), checksum=hashlib.md5(data).hexdigest(),
                                     os_hash_algo=self.store_hash,
                                     os_hash_value=hashlib.new(self.store_hash, data).hexdigest())


# the glance CLI on a fake head node: what the stream's shell line runs there (IMAGE_ID is what it creates)
IMAGE_ID = "0f3c2e1a-5b6d-4c7e-8f90-a1b2c3d4e5f6"
FAKE_GLANCE = f"""#!/bin/sh
# stand-in for the glance CLI: records what it is asked to do under $FAKE_DIR
cmd=$1; shift
echo "$cmd $*" >> "$FAKE_DIR/calls"
case "$cmd" in
  image-create)
    [ -e "$FAKE_DIR/fail-create" ] && {{ echo "Error: connection to glance lost" >&2; exit 1; }}
    [ -e /proc/$$/fd/0 ] && {{ echo "stdin is open: glance would read image data from it" >&2; exit 9; }}
    printf '+------+------+\\n| Property | Value |\\n| name | x\\n| | | id | evil |\\n'
    printf '| id | {IMAGE_ID} |\\n| status | queued |\\n+------+------+\\n' ;;
  image-upload)
    size=${{1#--size=}}
    cat > "$FAKE_DIR/uploaded"
    [ -e "$FAKE_DIR/fail-upload" ] && {{ echo "HTTP 500 Internal Server Error" >&2; exit 1; }}
    [ -e "$FAKE_DIR/lenient" ] || [ "$(stat -c %s "$FAKE_DIR/uploaded")" = "$size" ] || {{
      echo "Size mismatch" >&2; exit 1; }} ;;
  image-delete) echo "$1" >> "$FAKE_DIR/deleted" ;;
esac
"""

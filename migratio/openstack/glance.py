"""A narrow Glance v2 client (python-glanceclient) that speaks migratio's errors, and the
destination Glance reached through it (ApiGlance, for `register: {via: api}`).

Everything streams: downloads go to a file in 1 MiB writes, uploads read the file in chunks.
"""

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping
from urllib.parse import urlsplit

import requests
from glanceclient import exc as gexc
from glanceclient.v2 import client as gclient
from keystoneauth1 import exceptions as ks_exc

from migratio.errors import AuthError, ImageNotFound, PermanentError, StepError, TransientError
from migratio.openstack.glance_protocol import OWNER_PROBE, ImageRecord, NewImage, Payload, Progress, StreamCommands


@dataclass
class SourceImage:
    """What `locate` learned about the image on this (the source) site."""

    id: str
    name: str
    disk_format: str
    container_format: str
    size: int
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    min_disk: int = 0
    min_ram: int = 0
    path: Path | None = None  # the file to read: the Glance store file or a download in the job dir
    virtual_size: int | None = None  # filled by `inspect`


CHUNK = 1024 * 1024

# Image fields Glance owns (base schema, server-set or reserved): never copied as user properties.
BASE_FIELDS = frozenset({
    "id", "name", "status", "visibility", "protected", "checksum", "os_hash_algo", "os_hash_value",
    "owner", "size", "virtual_size", "min_disk", "min_ram", "disk_format", "container_format",
    "created_at", "updated_at", "tags", "file", "schema", "self", "direct_url", "locations",
    "os_hidden", "stores", "import_methods",
})
RESERVED_PREFIXES = ("os_glance",)
TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})


def user_properties(image: Mapping[str, Any]) -> dict[str, str]:
    """The image's own properties (what an operator or user set), as strings."""
    return {
        str(k): str(v) for k, v in image.items()
        if k not in BASE_FIELDS and not str(k).startswith(RESERVED_PREFIXES) and v is not None
    }


def source_image(image: Mapping[str, Any]) -> SourceImage:
    return SourceImage(
        id=image["id"], name=image.get("name") or "", disk_format=image.get("disk_format") or "",
        container_format=image.get("container_format") or "bare", size=int(image.get("size") or 0),
        checksum=image.get("checksum"), os_hash_algo=image.get("os_hash_algo"),
        os_hash_value=image.get("os_hash_value"), properties=user_properties(image),
        min_disk=int(image.get("min_disk") or 0), min_ram=int(image.get("min_ram") or 0),
    )


class GlanceClient:
    """Glance of one site, through its API.

    Args:
        session: a keystoneauth1 Session (see migratio.openstack.auth); its `endpoint_filter`
            attribute, when present, selects region and interface.
        site: how messages name this Glance (default: the endpoint's host:port).
    """

    def __init__(self, session, site: str | None = None, client: gclient.Client | None = None):
        self.session = session
        self.client = client or gclient.Client(session=session, **getattr(session, "endpoint_filter", {}))
        self.site = site or _endpoint_label(self.client)

    # -- reading
    def show(self, image_id: str) -> ImageRecord:
        """The image record as a dict (raises ImageNotFound)."""
        with self._errors(f"image {image_id}", image_id):
            return dict(self.client.images.get(image_id))

    def get(self, image_id: str) -> SourceImage:
        """The image as a SourceImage; it must exist and be active."""
        image = self.show(image_id)
        if image.get("status") != "active":
            raise PermanentError(f"image {image_id} on {self.site} is {image.get('status')}, not active")
        return source_image(image)

    def status(self, image_id: str) -> str:
        return str(self.show(image_id).get("status"))

    def find(self, filters: Mapping[str, str]) -> list[ImageRecord]:
        """Images matching `filters` (any status), from one filtered list request (one page)."""
        with self._errors("image list"):
            return [dict(i) for i in self.client.images.list(filters=dict(filters), page_size=100)]

    def download(self, image_id: str, dest: Path, progress: Progress | None = None) -> int:
        """Stream the image data into `dest` (hash-checked by glanceclient); returns bytes written."""
        done = 0
        with self._errors(f"download of image {image_id}", image_id):
            body = self.client.images.data(image_id)
            if body is None:
                raise PermanentError(f"image {image_id} on {self.site} has no data")
            total = len(body) if hasattr(body, "__len__") else None
            with open(dest, "wb") as out:
                for chunk in _rechunk(body):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        return done

    # -- writing
    def create(self, name: str, disk_format: str, container_format: str,
               properties: Mapping[str, str], min_disk: int = 0, min_ram: int = 0) -> str:
        """Create an image record (status queued); returns its id."""
        fields: dict[str, object] = dict(properties, name=name, disk_format=disk_format,
                                         container_format=container_format)
        if min_disk:
            fields["min_disk"] = min_disk
        if min_ram:
            fields["min_ram"] = min_ram
        with self._errors(f"creating image '{name}'"):
            return str(self.client.images.create(**fields)["id"])

    def upload(self, image_id: str, path: Path, progress: Progress | None = None) -> None:
        """Stream `path` into the image."""
        size = os.path.getsize(path)
        with open(path, "rb") as f, self._errors(f"upload to image {image_id}", image_id):
            self.client.images.upload(image_id, _CountingReader(f, size, progress), image_size=size)

    def delete(self, image_id: str) -> bool:
        """Delete the image; False when it was already gone."""
        try:
            with self._errors(f"deleting image {image_id}", image_id):
                self.client.images.delete(image_id)
        except ImageNotFound:
            return False
        return True

    def project(self) -> str:
        """The project owning what these credentials create: the session's Keystone project, else
        the owner of a throwaway image (created without data, deleted at once)."""
        with self._errors("the project of the credentials"):
            scoped = self.session.get_project_id() if hasattr(self.session, "get_project_id") else None
        if scoped:
            return str(scoped)
        probe = self.create(OWNER_PROBE, "raw", "bare", {})
        try:
            owner = self.show(probe).get("owner")
        finally:
            self.delete(probe)
        if not owner:
            raise PermanentError(f"Glance on {self.site} names no owner of a new image")
        return str(owner)

    @contextlib.contextmanager
    def _errors(self, what: str, image_id: str | None = None) -> Iterator[None]:
        try:
            yield
        except StepError:
            raise
        except Exception as exc:  # translated right here, at the client boundary
            raise translate(exc, what, self.site, image_id) from None


class ApiGlance:
    """The destination Glance through its API, from this worker: the payload is uploaded from here."""

    def __init__(self, client: GlanceClient):
        self.client = client
        self._project: str | None = None

    def find(self, filters: Mapping[str, str]) -> list[ImageRecord]:
        return self.client.find(filters)

    def show(self, image_id: str) -> ImageRecord:
        return self.client.show(image_id)

    def delete(self, image_id: str) -> bool:
        return self.client.delete(image_id)

    def project(self) -> str:
        if self._project is None:
            self._project = self.client.project()
        return self._project

    def register(self, image: NewImage, payload: Payload, created: list[str], progress: Progress) -> str:
        image_id = self.client.create(**image)
        created.append(image_id)
        self.client.upload(image_id, payload.local, progress=progress)
        return image_id

    def stream_commands(self, image: NewImage, size: int) -> StreamCommands | None:
        return None  # nothing runs on the head node


def translate(exc: Exception, what: str, site: str, image_id: str | None = None) -> StepError:
    """A glanceclient / keystoneauth / requests exception as a migratio error."""
    code = getattr(exc, "code", None) or getattr(exc, "http_status", None)
    detail = _detail(exc)
    if isinstance(exc, (gexc.HTTPNotFound, ks_exc.NotFound)) or code == 404:
        if image_id:
            return ImageNotFound(f"image {image_id} not found on {site}")
        return PermanentError(f"{what} on {site}: not found{detail}")
    if isinstance(exc, (gexc.HTTPUnauthorized, ks_exc.Unauthorized)) or code == 401:
        return AuthError(f"{what} on {site}: authentication failed (check the credentials){detail}")
    if isinstance(exc, (gexc.HTTPForbidden, ks_exc.Forbidden)) or code == 403:
        return AuthError(f"{what} on {site}: permission denied{detail}")
    if isinstance(exc, (gexc.CommunicationError, gexc.InvalidEndpoint, ks_exc.ConnectionError,
                        requests.RequestException, ConnectionError, TimeoutError)):
        return TransientError(f"{what} on {site}: cannot reach Glance{detail}")
    if isinstance(code, int) and code in TRANSIENT_CODES:
        return TransientError(f"{what} on {site}: Glance answered HTTP {code}{detail}")
    if isinstance(exc, IOError) and "Corrupt image download" in str(exc):
        return TransientError(f"{what} from {site}: data did not match the image's hash")
    if isinstance(exc, (ks_exc.EndpointNotFound, ks_exc.MissingAuthPlugin, gexc.EndpointNotFound)):
        return PermanentError(f"{what}: no image endpoint for {site}{detail}")
    if isinstance(code, int):
        return PermanentError(f"{what} on {site}: Glance answered HTTP {code}{detail}")
    return PermanentError(f"{what} on {site} failed: {type(exc).__name__}{detail}")


def _detail(exc: Exception) -> str:
    text = " ".join(str(getattr(exc, "details", None) or exc).split())
    return f": {text[:200]}" if text and text != "None" else ""


def _endpoint_label(client) -> str:
    try:
        url = client.http_client.get_endpoint()
    except Exception:
        return "Glance"
    parts = urlsplit(url or "")
    return parts.netloc or url or "Glance"


def _rechunk(body) -> Iterator[bytes]:
    for chunk in body:
        yield chunk if isinstance(chunk, bytes) else bytes(chunk)


class _CountingReader:
    """A file wrapper that reports bytes read (glanceclient chunks file-likes via .read)."""

    def __init__(self, f: BinaryIO, total: int, progress: Progress | None):
        self.f, self.total, self.progress, self.done = f, total, progress, 0

    def read(self, size: int = CHUNK) -> bytes:
        data = self.f.read(size if size and size > 0 else CHUNK)
        self.done += len(data)
        if self.progress and data:
            self.progress(self.done, self.total)
        return data

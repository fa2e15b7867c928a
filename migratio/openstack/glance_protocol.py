"""What the OpenStack steps need from the destination Glance: the `Glance` protocol and the
values it takes and returns.

Its implementations are ApiGlance (migratio.openstack.glance: the API, from this worker),
HeadNodeGlance (migratio.openstack.headnode: migratio's client on the head node, the glance
CLI where that cannot run) and CliGlance (migratio.openstack.glance_cli: the head node's
glance CLI); migratio.openstack.destination picks one for a site conf.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, TypedDict

ImageRecord = Mapping[str, object]  # an image as Glance shows it: id, status, size, hashes, owner, properties
Progress = Callable[[int, int | None], None]  # (bytes done, bytes in all)
# The name of the throwaway image (created, read, deleted) whose `owner` tells the project where the
# credentials do not (a token without Keystone); the head-node client spells it too.
OWNER_PROBE = "migratio-owner-probe"


class NewImage(TypedDict):
    """The record a copy is created with (also the head-node client's `create` spec, as JSON)."""

    name: str
    disk_format: str
    container_format: str
    properties: dict[str, str]
    min_disk: int
    min_ram: int


@dataclass(frozen=True)
class Payload:
    """The bytes a copy gets: the file on this worker, and where the transfer step stages it."""

    local: Path  # what the API uploads
    staged: str  # its path in the head node's staging dir: what the head node registers


@dataclass(frozen=True)
class StreamCommands:
    """The shell words the stream's line on the head node runs for Glance (migratio.openstack.stream)."""

    create: str  # makes the queued record and prints it
    id_of: str  # a filter: create's output in, the new image's id out
    upload: str  # + "$id": reads exactly the announced size from stdin
    delete: str  # + "$id"


class Glance(Protocol):
    """The destination Glance of one site; its messages name the site by id."""

    def find(self, filters: Mapping[str, str]) -> list[ImageRecord]:
        """Images with these properties, whatever their status and whoever owns them."""

    def project(self) -> str:
        """The project that owns what this Glance registers (Glance's `owner` of a new image): the
        credentials' Keystone project, else the owner of a throwaway image (OWNER_PROBE)."""

    def show(self, image_id: str) -> ImageRecord:
        """The image's record (raises ImageNotFound)."""

    def delete(self, image_id: str) -> bool:
        """Deletes the image; False when it was already gone."""

    def register(self, image: NewImage, payload: Payload, created: list[str], progress: Progress) -> str:
        """Creates the image with the payload's bytes; returns its id.

        `created` gets the id as soon as the image exists, even when its upload then fails (so a
        cleanup can delete it).
        """

    def stream_commands(self, image: NewImage, size: int) -> StreamCommands | None:
        """The head-node shell words that create this image and upload `size` bytes into it as
        they stream in; None when this Glance is not reached through the head node."""

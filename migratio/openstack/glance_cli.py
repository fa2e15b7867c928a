"""The destination Glance through its head node's `glance` CLI over SSH (CliGlance), its tables,
and how a failed remote Glance command reads.

Each CLI start costs about a second, so queries use migratio's client on the head node where
it runs (migratio.openstack.headnode); registering a staged file after an rsync always uses
the CLI (`image-create --file`).

Image names and property values are data: they may hold '|', quotes or newlines, so the
tables are read by position (id first, status from the right) and continuation rows
(multi-line cells) never count as records. Property names are data too, but a table shows
them padded: a property named "id " or "status\n" reads like the field itself. So a table
in which a key appears twice (or a field spans lines) is refused (AmbiguousTable), and the
stream's awk takes an id only from a table with exactly one `id` row.
"""

import contextlib
import logging
import shlex
from typing import Mapping, Sequence

from migratio import ids
from migratio.conf.sites import OpenStackOptions
from migratio.errors import CommandFailed, ImageNotFound, InvalidInput, PermanentError
from migratio.openstack import headnode_client as api
from migratio.openstack.glance_protocol import OWNER_PROBE, ImageRecord, NewImage, Payload, Progress, StreamCommands
from migratio.openstack.ssh import RemoteShell, command_failed, looks_transient

log = logging.getLogger("migratio.glance_cli")

SHOW_WIDTH = "100000"  # --max-column-width: hashes must not wrap
# awk: the value of the one `id` row of glance's Property|Value table; nothing when no row or
# several rows read as `id` (a property name such as " id" or "id " is shown like the field)
AWK_ID = ("$2 ~ /^[[:space:]]*id[[:space:]]*$/ { n++; id = $3 } "
          "END { if (n == 1) { gsub(/[[:space:]]/, \"\", id); print id } }")
# short fields that never span lines (the CLI wraps long values such as os_hash_value at 80
# columns unless told otherwise): a continuation row after one of them is not theirs
ONE_LINE = frozenset({"id", "status", "owner", "size", "checksum", "os_hash_algo", "disk_format",
                      "container_format", "virtual_size"})


class AmbiguousTable(ValueError):
    """A Property|Value table in which a property name could stand for a field (`key` is it)."""

    def __init__(self, key: str):
        super().__init__(f"key {key!r} appears twice or spans lines (a property name padded with spaces?)")
        self.key = key


def table_rows(text: str) -> list[list[str]]:
    """Cells of every `| a | b |` row of a prettytable (border lines dropped, header kept)."""
    rows = []
    for line in text.split("\n"):  # (not splitlines: a value may hold U+2028 and the like)
        line = line.rstrip()
        if line.startswith("|") and line.endswith("|") and len(line) > 1:
            rows.append([cell.strip() for cell in line[1:-1].split("|")])
    return rows


def parse_list(text: str) -> list[dict[str, str]]:
    """`glance --verbose image-list` -> [{"id", "status"}]; rows without a UUID first are skipped."""
    rows = table_rows(text)
    if not rows:
        return []
    header = rows[0]
    from_right = len(header) - header.index("Status") if "Status" in header else None
    images = []
    for cells in rows[1:]:
        image_id = image_id_or_none(cells[0])
        if image_id is None:
            continue
        image = {"id": image_id}
        if from_right is not None and len(cells) >= len(header):
            image["status"] = cells[-from_right]
        images.append(image)
    return images


def parse_show(text: str) -> dict[str, str]:
    """`glance image-show` / `image-create` Property|Value table -> dict (multi-line values joined).

    The value is everything right of the first '|', so values containing '|' stay whole. Raises
    AmbiguousTable when a key appears twice once stripped of its padding, or a continuation row
    follows a ONE_LINE field: a property name then reads as that field.
    """
    record: dict[str, str] = {}
    last, header = None, True
    for line in text.split("\n"):
        line = line.rstrip()
        if not (line.startswith("|") and line.endswith("|") and "|" in line[1:-1]):
            continue
        key, value = (part.strip() for part in line[1:-1].split("|", 1))
        if header and (key, value) == ("Property", "Value"):
            header = False
            continue
        if key in record or (not key and last in ONE_LINE):
            raise AmbiguousTable(key or str(last))
        if key:
            record[key], last = value, key
        elif last is not None:
            record[last] += "\n" + value
    return record


def table_safe(name: str) -> bool:
    """Whether a property name shows in a glance table as itself: not padded, one line, no '|'."""
    return bool(name) and name == name.strip() and len(name.splitlines()) == 1 and "|" not in name


def image_id_or_none(text: str) -> str | None:
    """`text` (stripped) as an image id in its canonical form, or None when it is not one."""
    with contextlib.suppress(InvalidInput):
        return ids.image_id(text.strip())
    return None


def create_args(name: str, disk_format: str, container_format: str, properties: Mapping[str, str],
                min_disk: int = 0, min_ram: int = 0) -> list[str]:
    """`glance image-create` arguments for a record with these fields (no data)."""
    args = ["image-create", f"--name={name}", f"--disk-format={disk_format}",
            f"--container-format={container_format}"]
    if min_disk:
        args.append(f"--min-disk={int(min_disk)}")
    if min_ram:
        args.append(f"--min-ram={int(min_ram)}")
    return args + [f"--property={key}={value}" for key, value in properties.items()]


def cli_commands(glance: Sequence[str], create: Sequence[str], size: int) -> StreamCommands:
    """The stream's shell words for the glance CLI (`glance` its argv, `create` image-create's arguments)."""
    cli = words(glance)
    return StreamCommands(f"{cli} {words(create)}", f"awk -F'|' {shlex.quote(AWK_ID)}",
                          f"{cli} image-upload --size={int(size)}", f"{cli} image-delete")


def words(argv: Sequence[str]) -> str:
    """argv as shell words, each quoted."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def remote_failure(what: str, site: str, where: str, code: int, err: str) -> CommandFailed:
    """A failed remote Glance command: its last stderr line; retryable when it looks transient."""
    transient = code == api.NO_CONNECTION or looks_transient(code, err)
    return command_failed(f"remote glance {what} on {site} ({where})", code, err, transient)


def shown(record: ImageRecord, image_id: str, site: str) -> ImageRecord:
    """The record an image-show of `image_id` answered, once it is that image's."""
    if str(record.get("id", "")).lower() != image_id:
        raise PermanentError(f"remote glance image-show {image_id} on {site}: unexpected output")
    return record


def missing(err: str) -> bool:
    """Whether a failed glance command said that the image does not exist."""
    return "No image with" in err or "404" in err or "not found" in err.lower()


class CliGlance:
    """The destination Glance through the head node's glance CLI (`. remote_env_file && glance ...`)."""

    def __init__(self, shell: RemoteShell, options: OpenStackOptions, site_id: str):
        self.shell, self.options, self.site = shell, options, site_id
        self.glance = options.glance_argv
        self._project: str | None = None

    def find(self, filters: Mapping[str, str]) -> list[ImageRecord]:
        """One list with the filters, then image-show of each hit (one whose table is ambiguous is
        left out: nothing in it can be trusted)."""
        args = ["--verbose", "image-list", *(f"--property-filter={key}={value}" for key, value in filters.items())]
        found = []
        for hit in parse_list(self._check(args, "image-list")):
            try:
                found.append(self._show(hit["id"]))
            except ImageNotFound:
                continue  # deleted meanwhile
            except AmbiguousTable as exc:
                log.warning("image %s on %s left out: its glance image-show table is ambiguous: %s",
                            hit["id"], self.site, exc)
        return found

    def show(self, image_id: str) -> ImageRecord:
        image_id = ids.image_id(image_id)
        try:
            return self._show(image_id)
        except AmbiguousTable as exc:
            raise PermanentError(f"remote glance image-show {image_id} on {self.site}: "
                                 f"ambiguous table: {exc}") from None

    def project(self) -> str:
        """The owner of a throwaway image (created without data, deleted at once); asked once."""
        if self._project is None:
            args = ["image-create", f"--name={OWNER_PROBE}", "--disk-format=raw", "--container-format=bare"]
            out = self._check(args, "image-create")
            try:
                record = parse_show(out)
            except AmbiguousTable as exc:
                raise PermanentError(f"remote glance image-create on {self.site}: ambiguous table: {exc}") from None
            probe = image_id_or_none(record.get("id", ""))
            if probe:
                self.delete(probe)
            if not probe or record.get("owner", "None") in ("", "None"):
                raise PermanentError(f"remote glance image-create on {self.site}: no image id or owner in its output")
            self._project = record["owner"]
        return self._project

    def _show(self, image_id: str) -> ImageRecord:
        code, out, err = self._run(["image-show", f"--max-column-width={SHOW_WIDTH}", image_id])
        if code != 0:
            if missing(err):
                raise ImageNotFound(f"image {image_id} not found on {self.site}")
            raise self._failure("image-show", code, err)
        return shown(parse_show(out), image_id, self.site)

    def delete(self, image_id: str) -> bool:
        image_id = ids.image_id(image_id)
        code, _, err = self._run(["image-delete", image_id])
        if code != 0:
            if missing(err):
                return False
            raise self._failure("image-delete", code, err)
        return True

    def register(self, image: NewImage, payload: Payload, created: list[str], progress: Progress) -> str:
        """`glance image-create ... --file STAGED`: the rsync'ed copy on the head node.

        It runs on a terminal: if this worker dies, the upload dies with it (the retried job
        then finds a queued copy to delete, never one that turns active later).
        """
        args = [*create_args(**image), f"--file={payload.staged}"]
        code, out, err = self.shell.run([*self.glance, *args], env_file=self.options.remote_env_file,
                                        timeout=None, pty=True)
        err = err or out  # on a terminal, errors arrive on stdout
        try:
            image_id = image_id_or_none(parse_show(out).get("id", ""))
        except AmbiguousTable as exc:  # (record_fields refuses the property names that do this)
            raise PermanentError(f"remote glance image-create on {self.site}: ambiguous table: {exc}") from None
        if image_id:
            created.append(image_id)
        if code != 0:
            raise self._failure("image-create", code, err)
        if not image_id:
            raise PermanentError(f"remote glance image-create on {self.site}: no image id in its output")
        return image_id

    def stream_commands(self, image: NewImage, size: int) -> StreamCommands:
        return cli_commands(self.glance, create_args(**image), size)

    def _run(self, args: Sequence[str]) -> tuple[int, str, str]:
        return self.shell.run([*self.glance, *args], env_file=self.options.remote_env_file, timeout=600)

    def _check(self, args: Sequence[str], what: str) -> str:
        code, out, err = self._run(args)
        if code != 0:
            raise self._failure(what, code, err)
        return out

    def _failure(self, what: str, code: int, err: str) -> CommandFailed:
        return remote_failure(what, self.site, self.shell.where, code, err)

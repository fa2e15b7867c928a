"""The destination Glance through its head node: a small API client run there, or its `glance` CLI.

Queries (find, show, delete) run `migratio/headnode_glance.py` with the head node's Python
(`remote_python`): one process and a few HTTP requests, where each glance CLI start costs
about a second; `install_client` puts it there for the stream's shell line (migratio.stream).
When that Python is missing or the credentials need the CLI, the CLI does it. Registering a
staged file after an rsync (`create_from_file`) always uses the CLI.

Image names and property values are data: they may hold '|', quotes or newlines, so the
tables are read by position (id first, status from the right) and continuation rows
(multi-line cells) never count as records.
"""

import hashlib
import json
import logging
import posixpath
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from migratio import ids
from migratio.errors import CommandFailed, ImageNotFound, InvalidInput, PermanentError
from migratio.openstack import headnode_client as api
from migratio.openstack.ssh import RemoteShell

SHOW_WIDTH = "100000"  # --max-column-width: hashes must not wrap
NO_COMMAND = 127  # the shell's "command not found"
CLI_NAMES = {"find": "image-list", "show": "image-show", "delete": "image-delete",  # in error messages
             "probe": "client install"}
INSTALL = 'mkdir -p -- "$1" && cat > "$2.$$" && mv -f -- "$2.$$" "$2" && shift 2 && exec "$@"'

log = logging.getLogger("migratio.glance_cli")


def table_rows(text: str) -> list[list[str]]:
    """Cells of every `| a | b |` row of a prettytable (border lines dropped, header kept)."""
    rows = []
    for line in text.splitlines():
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
        if not _is_uuid(cells[0]):
            continue
        image = {"id": cells[0].lower()}
        if from_right is not None and len(cells) >= len(header):
            image["status"] = cells[-from_right]
        images.append(image)
    return images


def parse_show(text: str) -> dict[str, str]:
    """`glance image-show` / `image-create` Property|Value table -> dict (multi-line values joined).

    The value is everything right of the first '|', so values containing '|' stay whole.
    """
    record: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        line = line.rstrip()
        if not (line.startswith("|") and line.endswith("|") and "|" in line[1:-1]):
            continue
        key, value = (part.strip() for part in line[1:-1].split("|", 1))
        if key == "Property" and value == "Value" and last is None:
            continue
        if key:
            record[key], last = value, key
        elif last is not None:
            record[last] += "\n" + value
    return record


def _is_uuid(text: str) -> bool:
    try:
        ids.image_id(text)
    except InvalidInput:
        return False
    return True


class RemoteGlance:
    """The destination Glance through its head node (`. remote_env_file && ...`).

    Same small surface as migratio.glance.Glance: find, show, delete (+ create_from_file).
    """

    def __init__(self, shell: RemoteShell, site, site_id: str):
        self.shell, self.options, self.site = shell, site, site_id
        self.glance = shlex.split(site.glance_command)
        self.python = shlex.split(site.remote_python) if site.remote_python else []
        self.cli_reason: str | None = None  # why the queries fell back to the CLI

    def find(self, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        """Images with these properties: one API query, or one CLI list then image-show of each hit."""
        pairs = [f"{key}={value}" for key, value in filters.items()]
        answer = self._api("find", pairs)
        if answer is not None:
            return [record for record in answer if _is_uuid(str(record.get("id", "")))]
        args = ["--verbose", "image-list", *(f"--property-filter={pair}" for pair in pairs)]
        hits = parse_list(self._check(args, "image-list"))
        found = []
        for hit in hits:
            try:
                found.append(self.show(hit["id"]))
            except ImageNotFound:
                continue  # deleted meanwhile
        return found

    def show(self, image_id: str) -> dict[str, Any]:
        image_id = ids.image_id(image_id)
        try:
            record = self._api("show", [image_id])
        except ImageNotFound:
            raise ImageNotFound(f"image {image_id} not found on {self.site}") from None
        if record is None:
            record = self._cli_show(image_id)
        if str(record.get("id", "")).lower() != image_id:
            raise PermanentError(f"remote glance image-show {image_id} on {self.site}: unexpected output")
        return record

    def delete(self, image_id: str) -> bool:
        image_id = ids.image_id(image_id)
        try:
            if self._api("delete", [image_id]) is not None:
                return True
        except ImageNotFound:
            return False
        code, _, err = self._run(["image-delete", image_id])
        if code != 0:
            if _missing(err):
                return False
            self._fail("image-delete", code, err)
        return True

    def install_client(self, directory: str) -> str | None:
        """Puts the client into `directory` on the head node (for the stream's shell line).

        Returns its path there once it authenticated, or None when only the CLI works here.
        """
        if not self.python:
            return None
        source = client_source()
        path = posixpath.join(directory, f".migratio-glance-{hashlib.sha256(source).hexdigest()[:12]}.py")
        code, out, err = self.shell.run(["sh", "-c", INSTALL, "sh", directory, path, *self.python, path, "probe"],
                                        env_file=self.options.remote_env_file, timeout=600, stdin=source)
        return None if self._answer("probe", code, out, err) is None else path

    def _api(self, op: str, args: Sequence[str]) -> Any:
        """The head node API client's JSON answer; None when only the CLI can do it here."""
        if not self.python:
            return None
        code, out, err = self.shell.run([*self.python, "-", op, *args], env_file=self.options.remote_env_file,
                                        timeout=600, stdin=client_source())
        return self._answer(op, code, out, err)

    def _answer(self, op: str, code: int, out: str, err: str) -> Any:
        if code == 0:
            try:
                return json.loads(out)
            except ValueError:
                raise PermanentError(f"remote glance {op} on {self.site}: the head node's answer is not JSON") from None
        if code == api.NOT_FOUND and op in ("show", "delete"):  # (a 404 elsewhere is a wrong endpoint)
            raise ImageNotFound(err.strip())
        if code in (api.UNSUPPORTED, NO_COMMAND):
            self.cli_reason = _last_line(err) or "not found"
            log.warning("%s on %s: %s; using the glance CLI", self.python[0], self.site, self.cli_reason)
            self.python = []
            return None
        self._fail(CLI_NAMES[op], code, err)

    def _cli_show(self, image_id: str) -> dict[str, Any]:
        code, out, err = self._run(["image-show", f"--max-column-width={SHOW_WIDTH}", image_id])
        if code != 0:
            if _missing(err):
                raise ImageNotFound(f"image {image_id} not found on {self.site}")
            self._fail("image-show", code, err)
        return parse_show(out)

    def _run(self, args: Sequence[str], timeout: float | None = 600) -> tuple[int, str, str]:
        return self.shell.run([*self.glance, *args], env_file=self.options.remote_env_file, timeout=timeout)

    def _check(self, args: Sequence[str], what: str, timeout: float | None = 600) -> str:
        code, out, err = self._run(args, timeout)
        if code != 0:
            self._fail(what, code, err)
        return out

    def create_from_file(self, name: str, disk_format: str, container_format: str,
                         properties: Mapping[str, str], path: str, min_disk: int = 0,
                         min_ram: int = 0, created: list[str] | None = None) -> str:
        """`glance image-create ... --file PATH`; returns the new image id.

        `created` gets the id as soon as the CLI printed it, even when the upload then failed.
        It runs on a terminal: if this worker dies, the upload dies with it (the retried job
        then finds a queued copy to delete, never one that turns active later).
        """
        args = [*create_args(name, disk_format, container_format, properties, min_disk, min_ram), f"--file={path}"]
        code, out, err = self.shell.run([*self.glance, *args], env_file=self.options.remote_env_file,
                                        timeout=None, pty=True)
        err = err or out  # on a terminal, errors arrive on stdout
        image_id = parse_show(out).get("id", "")
        if _is_uuid(image_id) and created is not None:
            created.append(image_id.lower())
        if code != 0:
            self._fail("image-create", code, err)
        if not _is_uuid(image_id):
            raise PermanentError(f"remote glance image-create on {self.site}: no image id in its output")
        return image_id.lower()

    def _fail(self, what: str, code: int, err: str) -> None:
        raise remote_failure(what, self.site, self.shell.where, code, err)


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


def client_source() -> bytes:
    return Path(api.__file__).read_bytes()


def _missing(err: str) -> bool:
    return "No image with" in err or "404" in err or "not found" in err.lower()


def _last_line(text: str) -> str:
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")


def remote_failure(what: str, site: str, where: str, code: int, err: str) -> CommandFailed:
    """A failed remote `glance` command: its last stderr line; retryable when it looks transient."""
    last = _last_line(err)
    transient = code in (255, api.NO_CONNECTION) or any(
        m in err for m in ("HTTP 50", "Unable to establish", "timed out", "Service Unavailable", "Connection refused"))
    return CommandFailed(f"remote glance {what} on {site} ({where}) failed (exit {code})"
                         + (f": {last}" if last else ""), retryable=transient, stderr_tail=err[-4000:])

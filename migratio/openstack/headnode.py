"""The destination Glance through migratio's small API client on its head node (HeadNodeGlance).

Queries (find, show, delete) run `migratio/openstack/headnode_client.py` with the head node's
Python (`remote_python`): one process and a few HTTP requests, where each glance CLI start
costs about a second; for the stream it is installed in the staging dir and its commands go
into the stream's shell line (migratio.openstack.stream). Where it cannot run (no such
Python, or credentials only the CLI understands) the glance CLI does the work (CliGlance);
registering a staged file after an rsync always uses the CLI.
"""

import hashlib
import json
import logging
import posixpath
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from migratio import ids
from migratio.conf.sites import OpenStackOptions
from migratio.errors import ImageNotFound, PermanentError
from migratio.openstack import headnode_client as api
from migratio.openstack.glance_cli import CliGlance, image_id_or_none, remote_failure, shown, words
from migratio.openstack.glance_protocol import ImageRecord, NewImage, Payload, Progress, StreamCommands
from migratio.openstack.ssh import RemoteShell, last_line

NO_COMMAND = 127  # the shell's "command not found"
CLI_NAMES = {"find": "image-list", "show": "image-show", "delete": "image-delete",  # in error messages
             "probe": "client install", "project": "project lookup"}
INSTALL = 'mkdir -p -- "$1" && cat > "$2.$$" && mv -f -- "$2.$$" "$2" && shift 2 && exec "$@"'

log = logging.getLogger("migratio.glance_cli")


class ClientUnavailable(Exception):
    """The client cannot run on this head node (its Python is missing, or the credentials need the CLI)."""


class HeadNodeClient:
    """migratio/openstack/headnode_client.py, run by the head node's `remote_python` over SSH.

    Its first run tells whether it can run there at all; when it cannot, every call raises
    ClientUnavailable without running anything again (`unavailable` says why).
    """

    def __init__(self, shell: RemoteShell, options: OpenStackOptions, site_id: str, install: bool = False):
        self.shell, self.options, self.site = shell, options, site_id
        self.python = shlex.split(options.remote_python or "")
        self.unavailable: str | None = None if self.python else "no remote_python in the site conf"
        self.answered = False  # it ran here and authenticated (so an install need not probe again)
        # with `install` (a job), its first run installs it in staging_dir, where the stream runs it
        self.install_dir, self.installed = (options.staging_dir if install else None), None

    def find(self, filters: Mapping[str, str]) -> list[ImageRecord]:
        answer = self._api("find", [f"{key}={value}" for key, value in filters.items()])
        return [record for record in answer if image_id_or_none(str(record.get("id", "")))]

    def project(self) -> str:
        answer = self._api("project", [])
        if not isinstance(answer, dict) or not answer.get("project"):
            raise PermanentError(f"remote glance project lookup on {self.site}: the head node's answer names "
                                 "no project")
        return str(answer["project"])

    def show(self, image_id: str) -> ImageRecord:
        try:
            return self._api("show", [image_id])
        except ImageNotFound:
            raise ImageNotFound(f"image {image_id} not found on {self.site}") from None

    def delete(self, image_id: str) -> bool:
        try:
            self._api("delete", [image_id])
        except ImageNotFound:
            return False
        return True

    def install(self, directory: str) -> str:
        """Puts the client into `directory` on the head node; returns its path there once it authenticated."""
        if self.installed and directory == self.install_dir:
            return self.installed  # (by its first run in this job)
        source = client_source()
        path = installed_path(directory, source)
        then = ["true"] if self.answered else [*self.python, path, "probe"]  # (it ran in this job: no probe)
        argv = ["sh", "-c", INSTALL, "sh", directory, path, *then]
        self._answer("probe", argv, source, json_answer=not self.answered)
        return path

    def _api(self, op: str, args: Sequence[str]) -> Any:
        """The client's JSON answer to `op` (the first run of a job's client installs it, in the same command)."""
        if self.installed:
            return self._answer(op, [*self.python, self.installed, op, *args], b"")
        if self.install_dir is None or self.unavailable is not None:
            return self._answer(op, [*self.python, "-", op, *args], client_source())
        source = client_source()
        path = installed_path(self.install_dir, source)
        answer = self._answer(op, ["sh", "-c", INSTALL, "sh", self.install_dir, path, *self.python, path, op, *args],
                              source)
        self.installed = path
        return answer

    def _answer(self, op: str, argv: list[str], stdin: bytes, json_answer: bool = True) -> Any:
        if self.unavailable is not None:
            raise ClientUnavailable(self.unavailable)
        code, out, err = self.shell.run(argv, env_file=self.options.remote_env_file, timeout=600, stdin=stdin)
        if code == 0:
            self.answered = True
            if not json_answer:
                return None
            try:
                return json.loads(out)
            except ValueError:
                raise PermanentError(f"remote glance {op} on {self.site}: the head node's answer is not JSON") from None
        if code == api.NOT_FOUND and op in ("show", "delete"):  # (a 404 elsewhere is a wrong endpoint)
            raise ImageNotFound(err.strip())
        if code in (api.UNSUPPORTED, NO_COMMAND):
            self.unavailable = last_line(err) or "not found"
            log.warning("%s on %s: %s; using the glance CLI", self.python[0], self.site, self.unavailable)
            raise ClientUnavailable(self.unavailable)
        raise remote_failure(CLI_NAMES[op], self.site, self.shell.where, code, err)


class HeadNodeGlance:
    """The destination Glance through its head node: migratio's client there, else the glance CLI."""

    def __init__(self, shell: RemoteShell, options: OpenStackOptions, site_id: str, install: bool = False):
        self.client = HeadNodeClient(shell, options, site_id, install)
        self.cli = CliGlance(shell, options, site_id)
        self.options, self.site = options, site_id
        self._project: str | None = None

    @property
    def cli_reason(self) -> str | None:
        """Why the glance CLI does the queries here (None while migratio's client does them)."""
        return self.client.unavailable

    def find(self, filters: Mapping[str, str]) -> list[ImageRecord]:
        """One run of the client (or the CLI's list and an image-show of each hit)."""
        try:
            return self.client.find(filters)
        except ClientUnavailable:
            return self.cli.find(filters)

    def project(self) -> str:
        """Asked once (the client, else the glance CLI's throwaway image)."""
        if self._project is None:
            try:
                self._project = self.client.project()
            except ClientUnavailable:
                self._project = self.cli.project()
        return self._project

    def show(self, image_id: str) -> ImageRecord:
        image_id = ids.image_id(image_id)
        try:
            return shown(self.client.show(image_id), image_id, self.site)
        except ClientUnavailable:
            return self.cli.show(image_id)

    def delete(self, image_id: str) -> bool:
        image_id = ids.image_id(image_id)
        try:
            return self.client.delete(image_id)
        except ClientUnavailable:
            return self.cli.delete(image_id)

    def register(self, image: NewImage, payload: Payload, created: list[str], progress: Progress) -> str:
        return self.cli.register(image, payload, created, progress)

    def stream_commands(self, image: NewImage, size: int) -> StreamCommands:
        """The client installed in the staging dir, or the CLI where it cannot run."""
        try:
            client = self.client.install(self.options.staging_dir)
        except ClientUnavailable:
            return self.cli.stream_commands(image, size)
        return client_commands(self.client.python, client, image, size)


def client_commands(python: Sequence[str], client: str, image: NewImage, size: int) -> StreamCommands:
    """The stream's shell words for migratio's client, installed on the head node at `client`."""
    run = words([*python, client])
    spec = json.dumps(image, sort_keys=True)
    return StreamCommands(f"{run} create {shlex.quote(spec)}", "head -n 1", f"{run} upload --size={int(size)}",
                          f"{run} delete")


def installed_path(directory: str, source: bytes) -> str:
    """Where the client is installed in `directory` (named by its hash: a new version, a new file)."""
    return posixpath.join(directory, f".migratio-glance-{hashlib.sha256(source).hexdigest()[:12]}.py")


def client_source() -> bytes:
    return Path(api.__file__).read_bytes()

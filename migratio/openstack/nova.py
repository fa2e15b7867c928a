"""A narrow Nova client (python-novaclient) for the optional boot check."""

import contextlib
import time
from typing import Any, Callable, Iterator

from keystoneauth1 import exceptions as ks_exc
from novaclient import client as nclient
from novaclient import exceptions as nexc

from migratio.errors import AuthError, PermanentError, StepError, TransientError

API_VERSION = "2.1"
TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})


class Nova:
    """Nova of one site. `site` names it in messages."""

    def __init__(self, session, site: str = "Nova", client: Any = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.client = client or nclient.Client(API_VERSION, session=session,
                                               **getattr(session, "endpoint_filter", {}))
        self.site, self.sleep, self.clock = site, sleep, clock

    def boot(self, name: str, image_id: str, flavor: str, network: str | None = None) -> str:
        """Create a server from the image; returns the server id (it is still building)."""
        nics = [{"net-id": network}] if network else None
        with self._errors(f"booting a server from image {image_id}"):
            return str(self.client.servers.create(name, image_id, flavor, nics=nics).id)

    def server(self, server_id: str) -> tuple[str, str | None]:
        """(status, fault message or None)."""
        with self._errors(f"server {server_id}"):
            server = self.client.servers.get(server_id)
        fault = getattr(server, "fault", None) or {}
        return str(server.status), (fault.get("message") if isinstance(fault, dict) else str(fault)) or None

    def wait(self, server_id: str, timeout: float, interval: float = 5.0) -> tuple[str, str | None]:
        """Poll until the server is ACTIVE or ERROR; PermanentError after `timeout` seconds."""
        deadline = self.clock() + timeout
        while True:
            status, fault = self.server(server_id)
            if status in ("ACTIVE", "ERROR"):
                return status, fault
            if self.clock() > deadline:
                raise PermanentError(f"boot check on {self.site}: server {server_id} still {status} "
                                     f"after {timeout:.0f}s")
            self.sleep(interval)

    def delete(self, server_id: str) -> bool:
        try:
            with self._errors(f"deleting server {server_id}"):
                self.client.servers.delete(server_id)
        except PermanentError as exc:
            if "not found" in str(exc):
                return False
            raise
        return True

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except StepError:
            raise
        except Exception as exc:  # translated at the client boundary
            raise translate(exc, what, self.site) from None


def translate(exc: Exception, what: str, site: str) -> StepError:
    code = getattr(exc, "code", None) or getattr(exc, "http_status", None)
    message = " ".join(str(getattr(exc, "message", None) or exc).split())[:200]
    if isinstance(exc, nexc.NotFound) or code == 404:
        return PermanentError(f"{what} on {site}: not found ({message})")
    if isinstance(exc, (nexc.Unauthorized, ks_exc.Unauthorized)) or code == 401:
        return AuthError(f"{what} on {site}: authentication failed")
    if isinstance(exc, (nexc.Forbidden, ks_exc.Forbidden)) or code == 403:
        return AuthError(f"{what} on {site}: permission denied ({message})")
    if isinstance(exc, (ks_exc.ConnectionError, ConnectionError, TimeoutError)):
        return TransientError(f"{what} on {site}: cannot reach Nova ({message})")
    if isinstance(code, int) and code in TRANSIENT_CODES:
        return TransientError(f"{what} on {site}: Nova answered HTTP {code} ({message})")
    if isinstance(code, int):
        return PermanentError(f"{what} on {site}: Nova answered HTTP {code} ({message})")
    return PermanentError(f"{what} on {site} failed: {type(exc).__name__}: {message}")

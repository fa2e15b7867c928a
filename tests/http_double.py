"""A small in-process HTTP server for API doubles: answers from a routing function, records requests.

A route returns ``(status, body)`` or ``(status, body, headers)``; ``body`` is JSON-able or None
(no body), ``headers`` a dict of extra response headers (e.g. Keystone's X-Subject-Token).
"""

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from support.lab.services import free_port  # noqa: F401  (re-exported for the tests)


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


Answer = tuple[int, object] | tuple[int, object, dict]  # (status, JSON-able body or None[, headers])


@dataclass
class HttpDouble:
    route: Callable[[Request], Answer]
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, self.path, dict(self.headers), self.rfile.read(length))
                double.requests.append(req)
                status, body, *extra = double.route(req)
                headers = extra[0] if extra else {}
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if data and "content-type" not in {name.lower() for name in headers}:
                    self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

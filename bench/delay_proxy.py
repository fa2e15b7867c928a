"""A user-space delay proxy: TCP in front of a server, holding each direction's data for RTT/2.

This kernel has no netem, so the benchmark puts latency here: every connection to `listen`
is forwarded to `target`, and every byte read from either side is written on to the other
side RTT/2 after it was read (a round trip through the proxy takes at least `rtt_ms`).
Each direction holds at most `buffer_bytes` (it stops reading while it holds that much, so
TCP's flow control pushes back on the sender); the default is larger than rate x delay at
~1 GB/s and 50 ms, so it does not cap throughput itself. An EOF is forwarded (after the same
delay) as a half-close (shutdown(SHUT_WR)); the connection ends when both directions have.

    python3 -m bench.delay_proxy --listen 127.0.0.1:2222 --target 10.231.10.2:22 --rtt-ms 50

    with DelayProxy(target=("10.231.10.2", 22), rtt_ms=50.0) as proxy:
        ssh -p {proxy.port} 127.0.0.1 ...

One thread per direction, select on non-blocking sockets; the data never enters Python: it is
spliced from the socket into a pipe (one per held chunk, reused) and from the pipe to the other
socket, so the proxy costs little CPU next to ssh (Linux only, as the benchmark is).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import sys
import threading
import time

PIPE_SIZE = 1024 * 1024             # each held chunk sits in a pipe of this size (the largest single read)
SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
DEFAULT_BUFFER = 64 * 1024 * 1024   # per direction: > 1 GB/s x 25 ms (half of a 50 ms RTT)
EOF = b""


class Direction:
    """One way of one connection, pumped by one thread: what `src` sends is spliced into a pipe
    (kernel memory, no copy through Python), queued with its release time, and spliced on to
    `dst` once due; reading stops while `limit` bytes are held."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, limit: int, done):
        self.src, self.dst, self.delay, self.limit, self.done = src, dst, delay, limit, done
        self.queue: collections.deque[list] = collections.deque()  # [release, read fd, write fd, bytes]
        self.spare: list[tuple[int, int]] = []
        self.held = 0
        self.peak_held = 0
        self.eof = False
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        error = False
        try:
            while not self.closed and not (self.eof and not self.queue):
                self._step()
            if self.eof and not self.closed:
                with contextlib.suppress(OSError):
                    self.dst.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):  # ValueError: select on a socket another thread closed
            error = True
        finally:
            for _, r, w, _ in self.queue:
                self.spare.append((r, w))
            for fds in self.spare:
                for fd in fds:
                    os.close(fd)
            self.done(error)

    def _step(self) -> None:
        now = time.monotonic()
        due = bool(self.queue) and self.queue[0][0] <= now
        reading = not self.eof and self.held < self.limit
        timeout = None if due or not self.queue else self.queue[0][0] - now
        readable, writable, _ = select.select([self.src] if reading else [], [self.dst] if due else [], [],
                                              timeout)
        if readable:
            self._read()
        if writable or (readable and self.queue):  # try at once what may be due (non-blocking)
            self._write(time.monotonic())

    def _pipe(self) -> tuple[int, int]:
        if self.spare:
            return self.spare.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return r, w

    def _read(self) -> None:
        r, w = self._pipe()
        try:
            n = os.splice(self.src.fileno(), w, min(PIPE_SIZE, self.limit - self.held), flags=SPLICE)
        except BlockingIOError:
            n = -1
        except OSError:
            n = 0
        if n <= 0:
            self.spare.append((r, w))
            self.eof = self.eof or n == 0
            return
        self.queue.append([time.monotonic() + self.delay, r, w, n])
        self.held += n
        self.peak_held = max(self.peak_held, self.held)

    def _write(self, now: float) -> None:
        """Splice every due pipe on to `dst` until the socket takes no more."""
        while self.queue and self.queue[0][0] <= now:
            entry = self.queue[0]
            try:
                sent = os.splice(entry[1], self.dst.fileno(), entry[3], flags=SPLICE)
            except BlockingIOError:
                return
            entry[3] -= sent
            self.held -= sent
            if entry[3] == 0:
                self.queue.popleft()
                self.spare.append((entry[1], entry[2]))

    def close(self) -> None:
        self.closed = True


class Connection:
    """A client socket and its upstream socket, with one Direction each way."""

    def __init__(self, client: socket.socket, upstream: socket.socket, delay: float, limit: int, forget):
        self.sockets = (client, upstream)
        self.forget = forget
        self.lock = threading.Lock()
        self.finished = 0
        self.closed = False
        self.ways = (Direction(client, upstream, delay, limit, self._done),
                     Direction(upstream, client, delay, limit, self._done))

    def start(self) -> None:
        for way in self.ways:
            way.start()

    def _done(self, error: bool) -> None:
        """A writer ended: both ends close once both directions are done (or on any error)."""
        with self.lock:
            self.finished += 1
            if not error and self.finished < 2:
                return
        self.close()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for way in self.ways:
            way.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.forget(self)

    @property
    def peak_held(self) -> int:
        return max(way.peak_held for way in self.ways)


class DelayProxy:
    """Listen on (listen_host, listen_port or a free port: `.port`), forward to `target` with delay."""

    def __init__(self, target: tuple[str, int], rtt_ms: float = 0.0, listen_host: str = "127.0.0.1",
                 buffer_bytes: int = DEFAULT_BUFFER, listen_port: int = 0):
        if rtt_ms < 0 or buffer_bytes < 1:
            raise ValueError(f"delay proxy: rtt_ms {rtt_ms} and buffer_bytes {buffer_bytes} must be >= 0 / >= 1")
        self.target, self.rtt_ms, self.buffer_bytes = target, float(rtt_ms), int(buffer_bytes)
        self.listen_host, self.listen_port = listen_host, listen_port
        self.port = 0
        self.peak_held = 0        # the most any one direction held, over every connection so far
        self.connections = 0
        self._live: set[Connection] = set()
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "DelayProxy":
        server = socket.create_server((self.listen_host, self.listen_port), backlog=128)
        self._server, self.port = server, server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name=f"delay-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # stop() closed the listening socket
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(client, upstream, self.rtt_ms / 2000.0, self.buffer_bytes, self._forget)
            with self._lock:
                self._live.add(conn)
                self.connections += 1
            conn.start()

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self.peak_held = max(self.peak_held, conn.peak_held)
            self._live.discard(conn)

    def held_peak(self) -> int:
        """The most bytes any one direction held so far (live connections included)."""
        with self._lock:
            return max([self.peak_held, *(c.peak_held for c in self._live)])

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            live = list(self._live)
        for conn in live:
            conn.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "DelayProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=_address, required=True, help="HOST:PORT to listen on (PORT 0: any)")
    p.add_argument("--target", type=_address, required=True, help="HOST:PORT to forward to")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip delay added, ms (RTT/2 each way)")
    p.add_argument("--buffer-bytes", type=int, default=DEFAULT_BUFFER, help="most bytes held per direction")
    args = p.parse_args(argv)
    proxy = DelayProxy(args.target, args.rtt_ms, args.listen[0], args.buffer_bytes, args.listen[1]).start()
    print(f"delay proxy {args.listen[0]}:{proxy.port} -> {args.target[0]}:{args.target[1]}, "
          f"RTT +{args.rtt_ms:g} ms", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    print(json.dumps({"connections": proxy.connections, "peak_held_bytes": proxy.held_peak()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

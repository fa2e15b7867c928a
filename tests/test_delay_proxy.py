"""bench.delay_proxy: bytes intact both ways, the added round trip, half-close, bounded buffers, ssh."""

import hashlib
import os
import socket
import subprocess
import threading
import time

import pytest

from bench.delay_proxy import DelayProxy
from bench.latency import ProxyProcess, known_hosts_for
from support.lab.services import Sshd
from tests.waiting import wait_for

MiB = 1024 * 1024


class Server:
    """A TCP server on 127.0.0.1 running `handle(conn)` per connection in its own thread."""

    def __init__(self, handle):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        with conn:
            self.handle(conn)

    def close(self):
        self.sock.close()


def read_all(conn) -> bytes:
    chunks = []
    while chunk := conn.recv(MiB):
        chunks.append(chunk)
    return b"".join(chunks)


def echo(conn):
    while data := conn.recv(MiB):
        conn.sendall(data)


def digest_reply(conn):
    """Reads to EOF (the client's half-close), then answers with the sha256 of what it got."""
    conn.sendall(hashlib.sha256(read_all(conn)).hexdigest().encode())


@pytest.fixture
def server():
    made = []

    def make(handle):
        made.append(Server(handle))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_bytes_identical_both_ways_on_concurrent_connections(server):
    upstream = server(echo)
    payloads = [os.urandom(24 * MiB) for _ in range(3)]
    got: dict[int, str] = {}

    def roundtrip(i):
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            sender = threading.Thread(target=lambda: (c.sendall(payloads[i]), c.shutdown(socket.SHUT_WR)))
            sender.start()
            got[i] = hashlib.sha256(read_all(c)).hexdigest()
            sender.join()

    with DelayProxy(target=("127.0.0.1", upstream.port), rtt_ms=4.0) as proxy:
        threads = [threading.Thread(target=roundtrip, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert proxy.connections == len(payloads)
    assert got == {i: hashlib.sha256(p).hexdigest() for i, p in enumerate(payloads)}


def test_a_round_trip_takes_at_least_the_rtt(server):
    upstream = server(echo)
    rtt = 0.2
    with DelayProxy(target=("127.0.0.1", upstream.port), rtt_ms=rtt * 1000) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            for _ in range(3):
                start = time.monotonic()
                c.sendall(b"ping")
                assert c.recv(16) == b"ping"
                assert time.monotonic() - start >= rtt * 0.95  # a lower bound on the added delay


def test_half_close_is_forwarded_and_the_reply_still_arrives(server):
    upstream = server(digest_reply)
    payload = os.urandom(5 * MiB)
    with DelayProxy(target=("127.0.0.1", upstream.port), rtt_ms=20.0) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)  # the server only answers once it sees EOF
            assert read_all(c).decode() == hashlib.sha256(payload).hexdigest()


def test_buffers_stay_bounded_with_a_slow_reader(server):
    release = threading.Event()
    received = {}

    def slow(conn):
        release.wait(60)
        received["sha"] = hashlib.sha256(read_all(conn)).hexdigest()

    upstream = server(slow)
    payload, limit = os.urandom(16 * MiB), 256 * 1024
    with DelayProxy(target=("127.0.0.1", upstream.port), rtt_ms=2.0, buffer_bytes=limit) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            sender = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
            sender.start()
            wait_for(lambda: proxy.held_peak() >= limit, "the proxy to fill its buffer", timeout=30)
            assert sender.is_alive()  # the sender is held back: the proxy stopped reading
            release.set()
            sender.join(60)
            wait_for(lambda: "sha" in received, "the slow reader to get everything", timeout=60)
        assert proxy.held_peak() <= limit
    assert received["sha"] == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("kind", [DelayProxy, ProxyProcess], ids=["in-process", "own-process"])
def test_ssh_session_through_the_proxy(tmp_path, kind):
    sshd = Sshd(tmp_path / "sshd")
    sshd.spawn()
    try:
        sshd.wait_ready()
        payload = tmp_path / "payload"
        payload.write_bytes(os.urandom(8 * MiB))
        with kind(target=("127.0.0.1", sshd.port), rtt_ms=10.0) as proxy:
            known = known_hosts_for(sshd.known_hosts, "127.0.0.1", proxy.port, tmp_path / "known_hosts")
            argv = ["ssh", "-p", str(proxy.port), "-i", str(sshd.client_key), "-o", "BatchMode=yes",
                    "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
                    "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                    "127.0.0.1", "sha256sum"]
            with open(payload, "rb") as stdin:
                out = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, timeout=120)
        assert proxy.connections == 1 and 0 < proxy.held_peak() <= proxy.buffer_bytes
    finally:
        sshd.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == hashlib.sha256(payload.read_bytes()).hexdigest()

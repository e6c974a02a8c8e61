"""The network relay of the tests and benchmarks: per-request delay, per-connection and total bandwidth caps.

The upstream is a real TCP server speaking a two-line protocol (``GET n`` answers n bytes; ``PUT n`` then n
bytes answers ``ok``).  Timings are bounds with wide margins (a shared 2-core machine): a cap can only make a
transfer slower, so lower bounds are exact; the upper bounds only tell a per-connection cap from a shared one.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from djfs.testing.relay import Pace, Relay

MiB = 1 << 20
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Answer(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while line := self.rfile.readline():
            verb, size = line.split()
            size = int(size)
            if verb == b"GET":
                while size:
                    piece = PAYLOAD[:min(size, len(PAYLOAD))]
                    self.wfile.write(piece)
                    size -= len(piece)
            else:
                while size:
                    size -= len(self.rfile.read(min(size, MiB)))
                self.wfile.write(b"ok\n")
            self.wfile.flush()


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    socketserver.ThreadingTCPServer.daemon_threads = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.server_address[1]
        server.shutdown()


class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def get(self, size: int) -> int:
        self.sock.sendall(b"GET %d\n" % size)
        received = 0
        while received < size:
            received += len(self.file.read1(min(size - received, MiB)))
        return received

    def put(self, size: int) -> bytes:
        self.sock.sendall(b"PUT %d\n" % size)
        for start in range(0, size, MiB):
            self.sock.sendall(PAYLOAD[:min(MiB, size - start)])
        return self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def timed(function) -> tuple[float, object]:
    start = time.monotonic()
    result = function()
    return time.monotonic() - start, result


def test_one_connection_is_held_to_its_rate_both_ways(upstream):
    cap = 16 * MiB
    with Relay(upstream, connection_rate=cap) as relay:
        client = _Client(relay.port)
        try:
            seconds, received = timed(lambda: client.get(16 * MiB))
            assert received == 16 * MiB
            assert 0.8 <= seconds < 8, f"16 MiB at 16 MiB/s took {seconds:.2f} s"
            seconds, answer = timed(lambda: client.put(8 * MiB))
            assert answer == b"ok\n"
            assert relay.delivered == 16 * MiB + 3
            assert 0.4 <= seconds < 8, f"an 8 MiB upload at 16 MiB/s took {seconds:.2f} s"
        finally:
            client.close()
        assert relay.connections == 1 and relay.requests == 2


def test_the_cap_is_per_connection_and_the_rate_is_shared(upstream):
    """Four connections under a per-connection cap go four times as fast as under the same total rate."""
    cap, each, streams = 16 * MiB, 8 * MiB, 4

    def parallel(relay: Relay) -> float:
        clients = [_Client(relay.port) for _ in range(streams)]
        try:
            with ThreadPoolExecutor(streams) as pool:
                seconds, sizes = timed(lambda: list(pool.map(lambda client: client.get(each), clients)))
            assert sizes == [each] * streams
            return seconds
        finally:
            for client in clients:
                client.close()

    with Relay(upstream, connection_rate=cap) as relay:
        per_connection = parallel(relay)
    with Relay(upstream, rate=cap) as relay:
        shared = parallel(relay)
    assert per_connection >= 0.4, f"4 x 8 MiB at 16 MiB/s each took {per_connection:.2f} s"
    assert shared >= 1.6, f"32 MiB at 16 MiB/s in all took {shared:.2f} s"
    assert per_connection < 0.75 * shared, (per_connection, shared)


def test_the_total_rate_can_change_while_connections_run(upstream):
    with Relay(upstream, rate=1e12) as relay:
        client = _Client(relay.port)
        try:
            fast, _ = timed(lambda: client.get(4 * MiB))
            relay.rate = 4 * MiB
            slow, received = timed(lambda: client.get(4 * MiB))
            relay.rate = None
            assert relay.rate is None and client.get(MiB) == MiB
        finally:
            client.close()
    assert received == 4 * MiB
    assert slow >= 0.75 and fast < slow  # 1 s at the nominal rate; the bucket's burst and timer slack allow less


def test_each_request_waits_its_round_trip(upstream):
    with Relay(upstream, delay=0.1) as relay:
        client = _Client(relay.port)
        try:
            seconds, sizes = timed(lambda: [client.get(1000) for _ in range(3)])
        finally:
            client.close()
    assert sizes == [1000] * 3 and relay.requests == 3
    assert seconds >= 0.3


def test_pace_holds_its_rate_on_average():
    pace = Pace(100 * MiB, burst=0.01)
    start = time.monotonic()
    for _ in range(50):
        pace.wait(MiB)  # 50 MiB at 100 MiB/s: 0.5 s; sleeps that end late are made up by the burst
    assert 0.48 <= time.monotonic() - start < 1.5
    with pytest.raises(ValueError):
        Pace(0)

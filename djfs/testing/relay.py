"""A TCP relay on loopback between a client and a local server (an S3 server), that plays a network.

* ``delay``: seconds added once per request (when the client starts sending again after the server
  answered), like a remote S3's round trip; sleeping threads cost no CPU, so concurrent requests overlap
  their delays exactly as over a real network (the benchmarks use this);
* ``connection_rate``: bytes per second of each connection, each way, as on a remote S3 where one TCP
  connection does not fill the network (window / round trip) and clients open several to go faster;
* ``rate``: bytes per second of all responses together, a slow link, so that a fault injected by a test
  reliably lands in the middle of a download;
* ``hold()`` / ``release()``: new connections wait, as in a network partition.

Counters: ``delivered`` (response bytes forwarded), ``requests`` (requests relayed), ``connections``.
Bytes are forwarded unchanged.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from typing import Self

CHUNK = 256 * 1024  # bytes per step: large, so that several fast connections cost the relay little CPU
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Pace:
    """Lets ``rate`` bytes per second through: a token bucket holding ``burst`` seconds' worth of bytes.

    ``wait(size)`` returns when ``size`` more bytes may go.  Shared by several threads it paces them together.
    The burst absorbs sleeps that end late (a loaded machine), so the average rate holds rather than sagging.
    """

    def __init__(self, rate: float, burst: float = 0.005) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.burst = burst
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, size: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self.burst)
            self._next = start + size / self.rate
        if start > now:
            time.sleep(start - now)


class TcpHop:
    """A listener on loopback that hands each accepted connection to ``_serve`` on its own thread: the part
    every TCP hop of the tests shares (this relay, and hops that watch or cut requests)."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", name: str = "hop") -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=name).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def _connect(self, client: socket.socket, timeout: float) -> socket.socket | None:
        """A connection to the upstream server, or None (the client's connection closed, as a down server's)."""
        try:
            server = socket.create_connection(self.upstream, timeout=timeout)
        except OSError:
            client.close()
            return None
        server.settimeout(None)
        return server

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_both(*sockets: socket.socket) -> None:
    """Shut down and close sockets, whatever state they are in."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class Relay(TcpHop):
    """``with Relay(upstream_port, delay=0.01, connection_rate=90 << 20) as relay:`` then talk to ``relay.port``."""

    def __init__(self, upstream_port: int, *, delay: float = 0.0, rate: float | None = None,
                 connection_rate: float | None = None, host: str = "127.0.0.1") -> None:
        self.delay = delay
        self.connection_rate = connection_rate  # read when a connection opens
        self.delivered = 0
        self.requests = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._total: Pace | None = None
        self.rate = rate
        self._open = threading.Event()
        self._open.set()
        super().__init__((host, upstream_port), host, name="relay")

    @property
    def rate(self) -> float | None:
        return self._total.rate if self._total is not None else None

    @rate.setter
    def rate(self, rate: float | None) -> None:
        """The total rate may change while connections run (a test slows the link only around a fault)."""
        if not rate:
            self._total = None
        elif self._total is None:
            self._total = Pace(rate)
        else:
            self._total.rate = rate

    @property
    def endpoint(self) -> str:
        return f"http://{self.upstream[0]}:{self.port}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _serve(self, client: socket.socket) -> None:
        self._open.wait(60)
        server = self._connect(client, timeout=5)
        if server is None:
            return
        with self._lock:
            self.connections += 1
        turn = {"answered": True}
        paces = [Pace(self.connection_rate) if self.connection_rate else None for _ in range(2)]
        threading.Thread(target=self._pump, args=(client, server, turn, True, paces[0]), daemon=True).start()
        self._pump(server, client, turn, False, paces[1])

    def _pump(self, source: socket.socket, target: socket.socket, turn: dict, request: bool,
              pace: Pace | None) -> None:
        """Forward one direction of a connection.  The bytes go through a pipe with ``splice`` (no copy through
        this process: a real network costs the client's machine nothing of the sort, and on a benchmark's two
        cores the relay's CPU would otherwise be taken from whatever it measures)."""
        pipe = _Pipe()
        try:
            while True:
                count = pipe.fill(source)
                if not count:
                    break
                if request:
                    if turn["answered"]:
                        with self._lock:
                            self.requests += 1
                        if self.delay:
                            time.sleep(self.delay)   # one round trip per request
                    turn["answered"] = False
                else:
                    turn["answered"] = True
                    total = self._total
                    if total is not None:
                        total.wait(count)
                if pace is not None:
                    pace.wait(count)
                if not request:
                    with self._lock:  # counted before it goes: a client that has the bytes sees them counted
                        self.delivered += count
                pipe.drain(target, count)
        except OSError:
            pass
        finally:
            pipe.close()
            close_both(source, target)


class _Pipe:
    """A pipe of ``CHUNK`` bytes that moves a socket's bytes to another socket inside the kernel."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        try:
            fcntl.fcntl(self._write, F_SETPIPE_SZ, CHUNK)
        except OSError:  # a pipe-max-size below CHUNK: smaller steps
            pass

    def fill(self, source: socket.socket) -> int:
        """Bytes that arrived on ``source`` (waits for some), now in the pipe; 0 at its end."""
        return os.splice(source.fileno(), self._write, CHUNK)

    def drain(self, target: socket.socket, count: int) -> None:
        while count:
            count -= os.splice(self._read, target.fileno(), count)

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)

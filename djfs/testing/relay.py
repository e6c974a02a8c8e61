"""A TCP relay on loopback between a client and a local server (moto), that plays a network.

* ``delay``: seconds added once per request (when the client starts sending again after the server
  answered), like a remote S3's round trip; sleeping threads cost no CPU, so concurrent requests overlap
  their delays exactly as over a real network (the benchmarks use this);
* ``rate``: bytes per second of all responses together, a slow link, so that a fault injected by a test
  reliably lands in the middle of a download; ``delivered`` counts the response bytes forwarded;
* ``hold()`` / ``release()``: new connections wait, as in a network partition.

Bytes are forwarded unchanged.
"""

from __future__ import annotations

import socket
import threading
import time


class Relay:
    """``with Relay(upstream_port, delay=0.01) as relay:`` then talk to ``relay.port``."""

    def __init__(self, upstream_port: int, *, delay: float = 0.0, rate: float | None = None,
                 host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.delay = delay
        self.rate = rate
        self.delivered = 0
        self._lock = threading.Lock()
        self._next = 0.0
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._open.wait(60)
        try:
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        turn = {"answered": True}
        threading.Thread(target=self._pump, args=(client, server, turn, True), daemon=True).start()
        self._pump(server, client, turn, False)

    def _pump(self, source: socket.socket, target: socket.socket, turn: dict, request: bool) -> None:
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                if request:
                    if turn["answered"] and self.delay:
                        time.sleep(self.delay)   # one round trip per request
                    turn["answered"] = False
                else:
                    turn["answered"] = True
                    self._throttle(len(data))
                target.sendall(data)
                if not request:
                    with self._lock:
                        self.delivered += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _throttle(self, size: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + size / self.rate
        time.sleep(max(0.0, start - now))

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

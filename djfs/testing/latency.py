"""A TCP relay on loopback that adds a fixed delay to every request, as a network to a remote S3 would.

The delay is added once per turn of the conversation: when the client starts sending again after the
server has answered (a new HTTP request on a kept-alive connection), not for every chunk of a large body.
Sleeping threads cost no CPU, so concurrent requests overlap their delays exactly as they would over a
real network.  Used by the benchmarks to measure djfs against an endpoint with realistic latency.
"""

from __future__ import annotations

import socket
import threading
import time


class LatencyRelay:
    """``with LatencyRelay(upstream_port, delay=0.01) as relay:`` then talk to ``relay.port``."""

    def __init__(self, upstream_port: int, delay: float, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.delay = delay
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="latency-relay").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            turn = {"answered": True}
            threading.Thread(target=self._pump, args=(client, server, turn, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, turn, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, turn: dict, request: bool) -> None:
        try:
            while True:
                data = source.recv(1 << 20)
                if not data:
                    break
                if request and turn["answered"]:
                    time.sleep(self.delay)   # one round trip per request
                    turn["answered"] = False
                elif not request:
                    turn["answered"] = True
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> "LatencyRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

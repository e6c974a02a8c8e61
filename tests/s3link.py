"""A TCP hop between djfs and the S3 server (moto) that sees requests: counts them and the bytes answered, can make
the first requests meet at a barrier (a timing-free proof that they were in flight at the same time), and can cut
responses short (a connection dropped mid-body).  Bytes are forwarded unchanged; nothing is mocked."""

from __future__ import annotations

import socket
import threading

from djfs.testing.relay import TcpHop, close_both
from djfs.testing.s3 import REGION, MotoServer


class S3Link(TcpHop):
    def __init__(self, server: MotoServer) -> None:
        self.server = server
        self.requests = 0
        self.answered = 0            # response bytes forwarded
        self.in_flight = 0
        self.most_in_flight = 0
        self.barrier: threading.Barrier | None = None
        self.barrier_broken = False
        self._meeting = 0            # requests still to wait at the barrier
        self.cuts = 0                # the next this many responses are cut after ``cut_after`` bytes
        self.cut_after = 64 << 10
        self._lock = threading.Lock()
        super().__init__((server.host, server.port), name="s3link")

    def store(self, bucket: str, **options):
        """An S3Store that talks to the server through this link."""
        from djfs.stores.s3 import S3Store
        account, token = self.server.credentials
        options.setdefault("timeout", 10.0)
        return S3Store(bucket, "", f"http://127.0.0.1:{self.port}", REGION, account, token, **options)

    def meet(self, parties: int) -> None:
        """The next ``parties`` requests wait for each other before they are forwarded (up to 20 s)."""
        with self._lock:
            self.barrier = threading.Barrier(parties, timeout=20)
            self._meeting = parties

    def _serve(self, client: socket.socket) -> None:
        server = self._connect(client, timeout=10)
        if server is None:
            return
        state = {"answered": True, "cut": False, "sent": 0}
        threading.Thread(target=self._requests, args=(client, server, state), daemon=True).start()
        self._responses(server, client, state)

    def _requests(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(1 << 16):
                if state["answered"]:  # a new request on this connection
                    state["answered"] = False
                    state["sent"] = 0
                    with self._lock:
                        self.requests += 1
                        self.in_flight += 1
                        self.most_in_flight = max(self.most_in_flight, self.in_flight)
                        state["cut"] = self.cuts > 0
                        self.cuts -= state["cut"]
                        barrier = self.barrier if self._meeting > 0 else None
                        self._meeting -= barrier is not None
                    if barrier is not None:
                        try:
                            barrier.wait()
                        except threading.BrokenBarrierError:
                            self.barrier_broken = True
                server.sendall(data)
        except OSError:
            pass
        finally:
            close_both(client, server)

    def _responses(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := server.recv(1 << 16):
                if not state["answered"]:
                    state["answered"] = True
                    with self._lock:
                        self.in_flight -= 1
                state["sent"] += len(data)
                if state["cut"] and state["sent"] > self.cut_after:
                    client.sendall(data[:len(data) // 2])
                    break  # the connection drops mid-body
                client.sendall(data)
                with self._lock:
                    self.answered += len(data)
        except OSError:
            pass
        finally:
            close_both(client, server)

"""A TCP hop between djfs and the S3 server (moto) that sees requests: counts them and the bytes answered, can make
the first requests meet at a barrier (a timing-free proof that they were in flight at the same time), and can cut
responses short (a connection dropped mid-body).  Bytes are forwarded unchanged; nothing is mocked."""

from __future__ import annotations

import socket
import threading

from djfs.testing.s3 import REGION, MotoServer


class S3Link:
    def __init__(self, server: MotoServer) -> None:
        self.server = server
        self.upstream = (server.host, server.port)
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
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="s3link").start()

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

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
        except OSError:
            client.close()
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
            _close(client, server)

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
            _close(client, server)

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> "S3Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

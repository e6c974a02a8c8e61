"""A real S3 endpoint for tests and demos: moto's S3 server in a subprocess on 127.0.0.1.

A subprocess, not moto's in-process mocks: the code under test then talks real HTTP through botocore's real
connection pool and timeouts, exactly as it would to MinIO or AWS, and a test can stop and restart the server to
see how djfs behaves when its backend goes away.  moto keeps its buckets in memory, so a restart empties them.

Credentials: moto accepts any; the dummy ones below are given only to the clients and stores this module creates,
never put into ``os.environ``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

DUMMY_ACCESS_KEY = "djfs-test-access-key"
DUMMY_SECRET_KEY = "djfs-test-secret-key"
REGION = "us-east-1"


class MotoServerError(RuntimeError):
    """The moto server is not installed, did not start, or died."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto's S3 server: ``with MotoServer() as server: server.location('prefix')``."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", startup_timeout: float = 30.0) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("moto.server") is None:
            raise MotoServerError("moto's server is not installed: pip install 'moto[server]'")
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile(prefix="djfs-moto-")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def credentials(self) -> tuple[str, str]:
        """(account, token) to pass to ``open_store``."""
        return DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

    def location(self, prefix: str = "") -> str:
        """An ``external-location`` naming this server: ``s3+http://127.0.0.1:PORT/prefix``."""
        return f"s3+http://{self.host}:{self.port}/{prefix.strip('/')}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "MotoServer":
        if self.running:
            return self
        environment = dict(os.environ)
        # the server must not pick up a developer's real AWS setup, nor proxy settings for 127.0.0.1
        for name in list(environment):
            if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
                del environment[name]
        environment.update(AWS_ACCESS_KEY_ID=DUMMY_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=DUMMY_SECRET_KEY,
                           AWS_DEFAULT_REGION=REGION, MOTO_PORT=str(self.port))
        self._log.seek(0)
        self._log.truncate()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True)  # a ^C in a test run must not kill it before the fixture stops it
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise MotoServerError(f"the moto server exited with status {self._process.returncode} on port "
                                      f"{self.port}: {self._output()}")
            try:
                with opener.open(f"{self.endpoint}/moto-api/", timeout=1.0):
                    return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise MotoServerError(f"the moto server did not answer on {self.endpoint} within "
                                      f"{self.startup_timeout} s: {self._output()}")
            time.sleep(0.05)

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode("utf-8", "replace").strip() or "(no output)"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port (buckets and objects are lost: moto keeps them in memory)."""
        self.stop()
        deadline = time.monotonic() + 10
        while True:  # the port can take a moment to be free again
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((self.host, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise MotoServerError(f"port {self.port} stays busy after stopping the moto server") from None
                time.sleep(0.1)
        self.start()

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server, with the dummy credentials (``config``: botocore Config options)."""
        import boto3
        from botocore.config import Config
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=DUMMY_ACCESS_KEY,
            aws_secret_access_key=DUMMY_SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, **config))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def store(self, bucket: str, prefix: str = "", **options: Any):
        """An ``S3Store`` on this server with the dummy credentials (``options``: S3Store keyword arguments)."""
        from ..stores.s3 import S3Store
        options.setdefault("timeout", 10.0)
        options.setdefault("retries", 2)
        return S3Store(bucket, prefix, self.endpoint, REGION, DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, **options)

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
        self._log.close()

    def __repr__(self) -> str:
        return f"MotoServer({self.endpoint}, {'running' if self.running else 'stopped'})"

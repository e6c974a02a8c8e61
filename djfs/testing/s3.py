"""Real S3 endpoints for tests, demos and benchmarks: local S3 servers in a subprocess on 127.0.0.1.

A subprocess, not moto's in-process mocks: the code under test then talks real HTTP through botocore's real
connection pool and timeouts, exactly as it would to MinIO or AWS, and a test can stop and restart the server to
see how djfs behaves when its backend goes away.

Two servers share one interface (``S3Server``): ``MotoServer`` here (moto keeps objects in memory or a spooled
temporary file and reads a whole object for every ranged GET: right for functional tests, wrong for speed), and
``S3rver`` in ``djfs.testing.s3rver`` (objects in files, a ranged GET reads only its bytes: for benchmarks).

Credentials: each server's dummy ones, given only to the clients and stores this module creates, never put into
``os.environ``.
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


class S3ServerError(RuntimeError):
    """A local S3 server is not installed, did not start, or died."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class S3Server:
    """A local S3 server in a subprocess: ``with Server() as server: server.location('prefix')``.

    Subclasses name the command line (``_command``), the credentials it accepts and a URL that answers once up.
    """

    name = "S3 server"
    access_key = DUMMY_ACCESS_KEY
    secret_key = DUMMY_SECRET_KEY

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", startup_timeout: float = 30.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile(prefix="djfs-s3-")

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        """Variables the server needs besides the dummy AWS ones."""
        return {}

    def _probe_path(self) -> str:
        """A path on the server that answers (with any HTTP status) once it is up."""
        return "/"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def credentials(self) -> tuple[str, str]:
        """(account, token) to pass to ``open_store``."""
        return self.access_key, self.secret_key

    @property
    def pid(self) -> int | None:
        """The server process's id (for its ``/proc/<pid>/io`` counters), None when stopped."""
        return self._process.pid if self.running else None

    def location(self, prefix: str = "") -> str:
        """An ``external-location`` naming this server: ``s3+http://127.0.0.1:PORT/prefix``."""
        return f"s3+http://{self.host}:{self.port}/{prefix.strip('/')}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "S3Server":
        if self.running:
            return self
        environment = dict(os.environ)
        # the server must not pick up a developer's real AWS setup, nor proxy settings for 127.0.0.1
        for name in list(environment):
            if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
                del environment[name]
        environment.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                           AWS_DEFAULT_REGION=REGION, **self._environment())
        self._log.seek(0)
        self._log.truncate()
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True)  # a ^C in a test run must not kill it before the fixture stops it
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise S3ServerError(f"the {self.name} exited with status {self._process.returncode} on port "
                                    f"{self.port}: {self._output()}")
            try:
                with opener.open(f"{self.endpoint}{self._probe_path()}", timeout=1.0):
                    return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise S3ServerError(f"the {self.name} did not answer on {self.endpoint} within "
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
        """Stop and start again on the same port."""
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
                    raise S3ServerError(f"port {self.port} stays busy after stopping the {self.name}") from None
                time.sleep(0.1)
        self.start()

    def client(self, endpoint: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client for this server with its dummy credentials.

        ``endpoint``: another URL leading to it (a relay); ``config``: botocore Config options.
        """
        import boto3
        from botocore.config import Config
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name=REGION, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, config=Config(s3={"addressing_style": "path"}, **config))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def store(self, bucket: str, prefix: str = "", endpoint: str | None = None, **options: Any):
        """An ``S3Store`` on this server with the dummy credentials.

        ``endpoint``: another URL leading to it (a relay); ``options``: S3Store keyword arguments.
        """
        from ..stores.s3 import S3Store
        options.setdefault("timeout", 10.0)
        options.setdefault("retries", 2)
        return S3Store(bucket, prefix, endpoint or self.endpoint, REGION, self.access_key, self.secret_key,
                       **options)

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
        self._log.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint}, {'running' if self.running else 'stopped'})"


class MotoServer(S3Server):
    """moto's S3 server.  It keeps buckets in memory, so a restart empties them; it accepts any credentials."""

    name = "moto server"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", startup_timeout: float = 30.0) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("moto.server") is None:
            raise S3ServerError("moto's server is not installed: pip install 'moto[server]'")
        super().__init__(port, host, startup_timeout)

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def _environment(self) -> dict[str, str]:
        return {"MOTO_PORT": str(self.port)}

    def _probe_path(self) -> str:
        return "/moto-api/"

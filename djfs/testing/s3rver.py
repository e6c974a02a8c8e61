"""s3rver (the npm registry's S3 server for tests) in a subprocess: an S3 endpoint whose ranged GET costs its bytes.

moto's server reads a whole object for every ranged GET (``FakeKey.value``), so against it a design that reads
ranges looks slow for a reason no real S3 has.  s3rver keeps each object in a file and answers a ranged GET with
a read stream of exactly that range; the benchmarks use it, and ``tests/test_s3_endpoint.py`` shows the property.
It supports what djfs uses: buckets, put, multipart upload, get with Range, head, delete, list_objects_v2, and
refuses any access key but its one fixed pair (``S3RVER`` / ``S3RVER``; V4 signatures themselves go unchecked).

Where it departs from S3 (why the functional tests stay on moto, measured with ``tests/test_stores.py``): a
ranged GET of an empty object announces one byte and sends none; ``list_multipart_uploads`` is not implemented;
listings are in directory order, not key order (``ab/c`` before ``ab-x``); a multipart object's ETag has no
``-<parts>`` suffix; creating an existing bucket says ``BucketAlreadyExists``, not ``...OwnedByYou``.

Installed on first use with npm into a cache directory outside the work tree (``DJFS_S3RVER_HOME``, default
``~/.cache/djfs-testing/s3rver-<version>``), pinned to one version; ``python3 -m djfs.testing.s3rver`` installs
it ahead of time (``scripts/test`` does).  Unlike moto, its objects live in files, so a restart keeps them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .s3 import S3Server, S3ServerError

VERSION = "3.7.1"


def install_dir() -> Path:
    """Where s3rver is (or will be) installed: shared by every checkout on the machine, ignored by git."""
    configured = os.environ.get("DJFS_S3RVER_HOME")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "djfs-testing" / f"s3rver-{VERSION}"


def _script(directory: Path) -> Path:
    return directory / "node_modules" / "s3rver" / "bin" / "s3rver.js"


def install() -> Path:
    """Install s3rver with npm unless it is there; return its command-line script.

    Concurrent callers (parallel test sessions) wait on a lock; npm installs into a fresh directory that is
    renamed into place, so nobody ever runs a half-installed server.
    """
    target = install_dir()
    if _script(target).is_file():
        return _script(target)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise S3ServerError("s3rver needs Node.js and npm: apt-get install nodejs npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _script(target).is_file():
            return _script(target)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            result = subprocess.run(
                [npm, "install", "--prefix", str(partial), "--no-audit", "--no-fund", "--no-save",
                 "--loglevel=error", f"s3rver@{VERSION}"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
            if result.returncode != 0 or not _script(partial).is_file():
                raise S3ServerError(f"npm could not install s3rver@{VERSION} (status {result.returncode}): "
                                    f"{(result.stderr or result.stdout).strip()[-2000:]}")
            os.rename(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return _script(target)


class S3rver(S3Server):
    """s3rver on 127.0.0.1 with its objects in ``directory``.

    By default a fresh temporary directory (in ``parent``, e.g. a tmpfs, else the system's), removed on exit.
    """

    name = "s3rver server"
    access_key = "S3RVER"  # the one key pair s3rver accepts; it checks every request's signature against it
    secret_key = "S3RVER"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", startup_timeout: float = 30.0,
                 directory: str | Path | None = None, parent: str | Path | None = None) -> None:
        super().__init__(port, host, startup_timeout)
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="djfs-s3rver-", dir=parent))

    def _command(self) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise S3ServerError("s3rver needs Node.js: apt-get install nodejs npm")
        return [node, str(install()), "--directory", str(self.directory), "--address", self.host,
                "--port", str(self.port), "--silent", "--no-vhost-buckets"]

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


if __name__ == "__main__":
    print(install())
    sys.exit(0)

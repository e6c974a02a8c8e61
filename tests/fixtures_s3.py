"""pytest plugin: a real S3 endpoint (a local S3 server subprocess) and a ``store`` fixture over every backend.

The functional tests run against moto's server, the closest to S3 in its answers; ``s3rver`` gives a test the
benchmarks' endpoint, whose ranged GETs cost only their bytes (``djfs.testing.s3rver`` says where it departs
from S3).
Loaded from ``tests/conftest.py`` with ``pytest_plugins = ["fixtures_s3"]``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from djfs.stores import FileStore, Store
from djfs.testing.s3 import MotoServer, S3Server
from djfs.testing.s3rver import S3rver

#: small enough that multipart uploads and parallel ranged reads are exercised by small test objects
TEST_PART_SIZE = 5 * 1024 * 1024
TEST_MULTIPART_THRESHOLD = 6 * 1024 * 1024


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """moto's S3 server, shared by the session; a test that restarts it must leave it running."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3rver() -> Iterator[S3rver]:
    """s3rver (objects in files, ranged GETs that read only their bytes), shared by the session."""
    with S3rver() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty, existing bucket of ``s3_server``."""
    return s3_server.create_bucket(f"djfs-test-{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    """A fresh empty store of each backend: every store test runs against both.

    The S3 store has a key prefix (to exercise prefixes) and a small multipart threshold and part size.
    """
    if request.param == "file":
        return FileStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return server.store(bucket, "some/prefix", multipart_threshold=TEST_MULTIPART_THRESHOLD,
                        part_size=TEST_PART_SIZE, max_concurrency=4)

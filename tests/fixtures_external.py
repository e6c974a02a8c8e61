"""pytest plugin: ``backend``, djfs.config pointed at a fresh file store or a fresh S3 bucket, for every test of
external storage that must hold on both stores; ``raw_store``, a named store beside it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import djfs
from djfs.stores import clear_store_cache


@pytest.fixture(params=["file", "s3"])
def backend(request, db_config, tmp_path):
    """Configures the store; returns ``use(schema, folder=None)``, which gives a schema its folder or bucket.

    ``backend.kind`` is ``"file"`` or ``"s3"``; the configuration is restored after the test.
    """
    with djfs.config.override():
        clear_store_cache()
        if request.param == "file":
            root = tmp_path / "store"
            root.mkdir()
            djfs.config["external-location"] = f"file://{root}"

            def use(schema, folder=None):
                schema.set_external_storage(folder or f"f{uuid.uuid4().hex[:12]}")
        else:
            server = request.getfixturevalue("s3_server")
            djfs.config["external-location"] = server.location("lab/prefix")
            djfs.config["external-account"], djfs.config["external-token"] = server.credentials

            def use(schema, folder=None):
                schema.set_external_storage(server.create_bucket(folder or f"djfs-{uuid.uuid4().hex[:16]}"))
        use.kind = request.param
        yield use
    clear_store_cache()


@pytest.fixture
def raw_store(schema, backend, tmp_path) -> Path:
    """``schema`` on ``backend``, and the named store ``raw`` (``external-raw``, ``npy@raw``) in a folder of its
    own beside it; returns that folder, where the named store's objects land."""
    backend(schema)
    raw = tmp_path / "raw"
    raw.mkdir()
    djfs.config["external-location-raw"] = f"file://{raw}"
    return raw

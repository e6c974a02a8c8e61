"""pytest plugin: the real ``datajoint`` package from PyPI (0.14.x), talking to the session's private MariaDB.

Compatibility is shown against DataJoint itself, not against our reading of it: tests declare pipelines,
insert and fetch with ``datajoint`` and compare with what djfs reads and writes on the same server.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest


@pytest.fixture
def dj(mariadb, db_config, tmp_path, monkeypatch) -> Iterator[Any]:
    """The ``datajoint`` module, connected to the session's server (no TLS: the private server has none).

    Its global ``dj.config`` is saved and restored around the test; ``download_path`` defaults to a folder of
    the test's own, and ``dj.config['stores']`` is empty until a test sets it (see :func:`dj_stores`).
    """
    import datajoint

    monkeypatch.chdir(tmp_path)  # DataJoint's downloads and any dj_local_conf.json stay in the test's folder
    saved = {key: datajoint.config[key] for key in datajoint.config}
    datajoint.config.update({
        "database.host": mariadb.host, "database.port": mariadb.port, "database.user": mariadb.user,
        "database.password": mariadb.password or "", "database.use_tls": False, "safemode": False,
        "loglevel": "WARNING", "display.limit": 10,
    })
    datajoint.config["stores"] = {}
    datajoint.conn(reset=True)
    try:
        yield datajoint
    finally:
        with contextlib.suppress(Exception):
            datajoint.conn().close()
        for key in list(datajoint.config):
            if key not in saved:
                with contextlib.suppress(Exception):
                    del datajoint.config[key]
        for key, value in saved.items():
            datajoint.config[key] = value

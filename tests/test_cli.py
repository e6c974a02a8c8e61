"""The ``djfs`` command: next to a DataJoint configuration it works, and every error is one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def djfs(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "djfs.cli", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)


def one_line(result: subprocess.CompletedProcess, command: str, warnings: bool = True) -> str:
    """The one line of stderr (besides the one warning about DataJoint's settings when ``warnings`` is False)."""
    lines = [line for line in result.stderr.strip().splitlines() if warnings or ": warning: " not in line]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"djfs {command}: "), result.stderr
    return lines[0]


@pytest.fixture
def datajoint_folder(dj, mariadb, tmp_path):
    """A folder holding the ``dj_local_conf.json`` DataJoint's own ``dj.config.save_local()`` writes."""
    dj.config.save_local()
    assert "connection.charset" in json.loads((tmp_path / "dj_local_conf.json").read_text())
    return tmp_path


def test_commands_work_next_to_a_datajoint_configuration(datajoint_folder, schema_name, connection):
    connection.query(f"CREATE DATABASE `{schema_name}`")
    result = djfs(datajoint_folder, "gc", schema_name)
    assert result.returncode == 0, result.stderr
    assert "would remove 0 objects" in result.stdout
    warning = one_line(result, "gc")
    assert "warning: djfs ignores these DataJoint settings" in warning and "connection.charset" in warning


@pytest.mark.parametrize("args, config, message", [
    (["gc", "no_such_schema_here"], None, "schema 'no_such_schema_here' does not exist"),
    (["gc", "x"], {"database.port": "not a port"}, "bad value 'not a port' for configuration key 'database.port'"),
    (["gc", "x"], {"database.prot": 1}, "unknown configuration key 'database.prot'"),
    (["cache", "info"], {}, "no cache configured"),
    (["mount", "/nonexistent/mountpoint"], {"database.port": "x"}, "database.port"),
    (["gc"], None, "the following arguments are required: schema"),
])
def test_every_error_is_one_line(datajoint_folder, args, config, message):
    if config is not None:
        (datajoint_folder / "dj_local_conf.json").write_text(json.dumps(config))
    result = djfs(datajoint_folder, *args)
    assert result.returncode != 0
    line = one_line(result, args[0], warnings=False)
    assert message in line

"""Configuration: DataJoint's keys, environment, JSON file, validation and masking."""

import json

import pytest

from djfs.settings import Config, ConfigError, parse_size


def test_defaults_and_datajoint_keys():
    config = Config()
    assert config["database.host"] == "localhost"
    assert config["database.port"] == 3306
    assert config["external-location"] is None
    assert config["external-location-raw"] is None  # named stores are known keys
    assert config["cache-size"] == 10 * 1024**3


def test_environment_overrides(monkeypatch):
    config = Config()
    config.load_environment({"DJ_HOST": "db.lab", "DJ_PORT": "3307", "DJ_USER": "alice", "DJ_PASS": "s3cr3t!"})
    assert (config["database.host"], config["database.port"], config["database.user"]) == ("db.lab", 3307, "alice")
    assert config["database.password"] == "s3cr3t!"


def test_bad_environment_value_names_variable():
    with pytest.raises(ConfigError, match="DJ_PORT"):
        Config().load_environment({"DJ_PORT": "not-a-port"})


def test_json_file(tmp_path):
    path = tmp_path / "dj_local_conf.json"
    path.write_text(json.dumps({"database.host": "h", "external-location": "file:///data",
                                "external-location-raw": "s3://s3.example.org/prefix", "cache-size": "2GiB"}))
    config = Config()
    config.load(path)
    assert config["external-location"] == "file:///data"
    assert config.store_spec("raw")["location"] == "s3://s3.example.org/prefix"
    assert config["cache-size"] == 2 * 1024**3


def test_load_default_reads_env_file(tmp_path, monkeypatch):
    from djfs.settings import load_default
    path = tmp_path / "conf.json"
    path.write_text(json.dumps({"database.user": "bob"}))
    monkeypatch.setenv("DJ_CONFIG", str(path))
    monkeypatch.setenv("DJ_HOST", "envhost")
    config = load_default()
    assert config["database.user"] == "bob" and config["database.host"] == "envhost"


@pytest.mark.parametrize("key, value, message", [
    ("database.prot", 1, "unknown configuration key 'database.prot'"),
    ("database.port", 70000, "database.port"),
    ("cache-size", "ten gigs", "cache-size"),
    ("external-location", "ftp://x", "external-location"),
    ("external-location-Bad", "file:///x", "unknown configuration key"),
    ("progress", "maybe", "progress"),
])
def test_bad_keys_and_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Config()[key] = value


def test_bad_file_contents(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        Config().load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="can't read"):
        Config().load(path)


def test_secrets_masked_everywhere():
    config = Config({"database.password": "hunter2-PASSWORD", "external-token": "tok-SECRET-9",
                     "external-token-raw": "tok-RAW-SECRET"})
    text = repr(config) + str(config) + str(config.masked())
    for secret in ("hunter2-PASSWORD", "tok-SECRET-9", "tok-RAW-SECRET"):
        assert secret not in text
    assert "********" in text
    with pytest.raises(ConfigError) as error:
        config["database.password"] = 12345
    assert "12345" not in str(error.value)


def test_override_restores():
    config = Config()
    with config.override(**{"cache-size": "1MiB"}):
        assert config["cache-size"] == 1024**2
    assert config["cache-size"] == 10 * 1024**3


@pytest.mark.parametrize("text, expected", [(0, 0), ("1KiB", 1024), ("1.5 MB", 1_500_000), ("3gib", 3 * 1024**3)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("key, value", [("transfer-threads", 0), ("transfer-threads", -2), ("store-retries", -1),
                                        ("transfer-threads", 2.5), ("store-retries", True)])
def test_counts_must_be_sane(key, value):
    with pytest.raises(ConfigError, match=key):
        Config()[key] = value


def datajoint_saved_config(dj_module, path):
    """A configuration file exactly as DataJoint's own ``dj.config.save()`` writes it."""
    dj_module.config.save(str(path))
    return json.loads(path.read_text())


def test_a_datajoint_config_file_loads_with_one_warning(tmp_path):
    import datajoint
    path = tmp_path / "dj_local_conf.json"
    saved = datajoint_saved_config(datajoint, path)
    assert "connection.charset" in saved and "display.width" in saved
    config = Config()
    with pytest.warns(UserWarning) as caught:
        config.load(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "connection.charset" in message and "display.width" in message and "enable_python_native_blobs" in message
    assert "safemode" not in message and "loglevel" not in message  # djfs uses these
    assert config["safemode"] is True and config["fetch_format"] == "array" and config["display.limit"] == 12
    assert config["connection.charset"] == ""
    with pytest.warns(UserWarning, match="custom"):
        config["custom"] = {"lab": "x"}
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config["connection.charset"] = "utf8"  # warned once already
    with pytest.raises(ConfigError, match="unknown configuration key 'display.limt'"):
        config["display.limt"] = 3  # typos are still caught
    config["custom"] = {"lab": "x", "archive": {"access_key": "AK", "secret_key": "SK-very-secret"}}
    assert "SK-very-secret" not in repr(config) and "AK" in repr(config)


def test_datajoint_keys_djfs_uses(tmp_path):
    import logging
    try:
        config = Config({"safemode": False, "fetch_format": "frame", "display.limit": 3, "loglevel": "warning"})
        assert (config["safemode"], config["fetch_format"], config["display.limit"], config["loglevel"]) == \
            (False, "frame", 3, "WARNING")
        assert logging.getLogger("djfs").level == logging.WARNING
    finally:
        logging.getLogger("djfs").setLevel(logging.NOTSET)
    with pytest.raises(ConfigError, match="fetch_format"):
        config["fetch_format"] = "table"


def test_configuration_is_read_on_first_use_not_at_import(tmp_path):
    """``import djfs`` next to a broken configuration file works; the first use reports the problem."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    (tmp_path / "dj_local_conf.json").write_text(json.dumps({"database.port": "not a port"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    script = ("import djfs\nprint('imported')\ntry:\n    djfs.config['database.port']\n"
              "except djfs.ConfigError as error:\n    print('first use:', error)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout and "first use: bad value 'not a port'" in result.stdout

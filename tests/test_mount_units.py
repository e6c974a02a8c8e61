"""The mount's pure parts, without FUSE: name escaping, value views, options, the outage-tolerant memo."""

from __future__ import annotations

import datetime
import io
import uuid

import numpy as np
import pytest

from djfs import blob
from djfs.objects.external import view_of
from djfs.fs import paths, views
from djfs.fs.mount import MountError, MountOptions, uses_s3
from djfs.fs.tree import Memo, Unavailable
from djfs.relational.heading import Attribute
from djfs.settings import Config


def attribute(name: str, sql_type: str, kind: str | None = None) -> Attribute:
    return Attribute(name=name, sql_type=sql_type, type=kind or sql_type, in_key=True, nullable=False, default=None,
                     comment="")


TEXT = attribute("subject", "varchar(64)")
NUMBER = attribute("scan", "int(11)")
UUID = attribute("uid", "binary(16)", "uuid")
DAY = attribute("day", "date")


@pytest.mark.parametrize("value", ["plain", "a/b", "..", ".", "", "%41", "nul\0byte", "tab\tnew\nline", "ü z",
                                   "x'; DROP TABLE t; --", '"quoted"', "back\\slash", "=", "a=b", "\x7f\x01",
                                   "💾" * 20])
def test_text_values_round_trip_and_cannot_break_the_tree(value):
    name = paths.component(TEXT, value)
    assert "/" not in name and "\0" not in name and name not in (".", "..")
    assert all(32 <= ord(c) < 127 for c in name)
    assert paths.split_component(name, TEXT) == value


def test_numbers_dates_and_uuids():
    assert paths.component(NUMBER, 7) == "scan=7"
    assert paths.split_component("scan=-3", NUMBER) == -3
    for bad in ("scan=+3", "scan=3.0", "scan= 3", "scan=", "scan=٣", "subject=3"):
        with pytest.raises(paths.BadName):
            paths.split_component(bad, NUMBER)
    assert paths.split_component("scan=007", NUMBER) == 7  # accepted here, refused as non-canonical by the tree
    assert paths.component(NUMBER, 7) != "scan=007"
    key = uuid.UUID(int=12345)
    assert paths.component(UUID, key.bytes) == f"uid={key}"
    assert paths.split_component(f"uid={key}", UUID) == key.bytes
    with pytest.raises(paths.BadName):
        paths.split_component("uid=not-a-uuid", UUID)
    assert paths.component(DAY, datetime.date(2024, 5, 6)) == "day=2024-05-06"


def test_names_the_kernel_could_send_but_nothing_can_match():
    for name in ("x" * 256, "a\udcff", ""):
        with pytest.raises(paths.BadName):
            paths.check_name(name)


@pytest.mark.parametrize("value", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.arange(5, dtype=">i8"), np.array([[True, False]]),
    np.zeros((300, 300)), np.arange(10, dtype=np.uint16), b"raw \x00 bytes", b"z" * 5000, {"a": [1, 2]},
    "text", 3.5, np.float64(2.0), np.array([1 + 2j]), [np.zeros(3), "x"], np.array(["a", "b"], dtype=object)])
def test_inline_views_match_external_views_and_render(value):
    packed = blob.serialize(value)
    stored = blob.pack(value)
    expected = view_of(value, packed)
    view = views.describe_inline(stored[:views.PREFIX_BYTES], len(stored))
    assert view is not None
    assert (view.kind, view.size, view.header) == (expected.kind, expected.size, expected.header)
    if view.data_offset is not None:
        content = view.header + stored[view.data_offset:]
    else:
        out = io.BytesIO()
        views.render(view.kind, view.header, stored, view.size, out)
        content = out.getvalue()
    assert len(content) == view.size
    if view.kind == "npy":
        np.testing.assert_array_equal(np.load(io.BytesIO(content)), value)
    elif view.kind == "bytes":
        assert content == value
    else:
        assert content == blob.pack(value, compress=False)


def test_a_compressed_blob_with_a_short_prefix_asks_for_the_whole_blob():
    stored = blob.pack(np.zeros((50, 50)))
    assert stored.startswith(blob.ZLIB_PREFIX)
    assert views.describe_inline(stored[:10], len(stored)) is None
    assert views.describe_inline(stored, len(stored)).kind == "npy"


def test_row_json_is_json_for_every_type():
    from djfs.relational.heading import Heading
    heading = Heading({name: attribute(name, sql, kind) for name, sql, kind in [
        ("day", "date", None), ("uid", "binary(16)", "uuid"), ("flag", "tinyint", "bool"), ("x", "double", None),
        ("data", "longtext", "json"), ("raw", "varbinary(4)", None)]})
    document = views.row_json(heading, {"day": datetime.date(2024, 1, 2), "uid": uuid.UUID(int=1).bytes,
                                        "flag": 1, "x": float("nan"), "data": '{"a": 1}', "raw": b"\x00\x01"})
    import json
    assert json.loads(document) == {"day": "2024-01-02", "uid": str(uuid.UUID(int=1)), "flag": True, "x": None,
                                    "data": {"a": 1}, "raw": "0001"}
    assert b'"flag": true' in document  # not 1 (which equals True in Python)


def test_mount_options():
    options = MountOptions.parse(["allow_other,uid=1000,file_mode=0440,block_size=8MiB", "schemas=a:b,ro"],
                                 schemas=["c"])
    assert options.fuse == {"allow_other": True}
    assert (options.uid, options.file_mode, options.block_size) == (1000, 0o440, 8 << 20)
    assert options.schemas == ["a", "b", "c"]
    for bad in ["rw", "fsname=x", "block_size=0", "dir_mode=800", "listing_timeout=-1", "uid", "password=x",
                "fuse_api=lowest", "fuse_api"]:
        with pytest.raises(MountError):
            MountOptions.parse([bad])


def test_the_fuse_api_follows_libfuse_unless_chosen():
    assert MountOptions.parse([]).api(3) == "low" and MountOptions.parse([]).api(2) == "high"
    assert MountOptions.parse(["fuse_api=high"]).api(3) == "high"
    assert MountOptions.parse(["fuse_api=low"]).api(3) == "low"
    with pytest.raises(MountError, match="needs libfuse 3"):
        MountOptions.parse(["fuse_api=low"]).api(2)
    assert MountOptions.parse(["allow_other,max_read=65536"]).low_level_options() == ["allow_other", "max_read=65536"]


def test_a_pipe_grows_to_the_system_limit_and_past_it_only_with_the_capability():
    """What decides whether libfuse can splice 1 MiB replies (``-o splice``): fs.pipe-max-size, or CAP_SYS_RESOURCE."""
    from djfs.fs.libfuse import pipe_holds, pipe_max_size
    limit = pipe_max_size()
    assert limit is not None and limit >= 4096
    with open("/proc/self/status") as status:
        effective = int(next(line for line in status if line.startswith("CapEff:")).split()[1], 16)
    sys_resource = bool(effective >> 24 & 1)  # CAP_SYS_RESOURCE
    assert pipe_holds(4096) and pipe_holds(limit)
    assert pipe_holds(2 * limit) == sys_resource


def test_the_low_level_session_names_the_options_it_refuses():
    from djfs.fs.lowlevel import refused_options
    assert refused_options(["allow_other", "max_read=65536", "ro", "fsname=djfs:x", "subtype=djfs",
                            "default_permissions"]) == []
    assert refused_options(["use_ino", "allow_other", "entry_timeout=3", "kernel_cache"]) == \
        ["use_ino", "entry_timeout=3", "kernel_cache"]


def test_memo_serves_last_known_values_only_to_lookups_while_the_database_is_down():
    memo = Memo(ttl=0.0)
    assert memo.get("k", lambda: "v1", stale_ok=False) == "v1"

    def down():
        raise Unavailable("down")
    assert memo.get("k", down, stale_ok=True) == "v1"
    with pytest.raises(Unavailable):
        memo.get("k", down, stale_ok=False)
    with pytest.raises(Unavailable):
        memo.get("other", down, stale_ok=True)


def test_memo_keeps_a_value_for_as_long_as_its_version():
    memo = Memo(ttl=None)
    loads = []

    def load(value):
        def run():
            loads.append(value)
            return value
        return run
    assert memo.get("k", load("a"), stale_ok=False, version=1) == "a"
    assert memo.get("k", load("b"), stale_ok=False, version=1) == "a"  # same version: not loaded again
    assert memo.get("k", load("c"), stale_ok=False, version=2) == "c"  # the table changed: loaded again
    assert loads == ["a", "c"]
    assert memo.fresh("k", 2) == "c" and memo.fresh("k", 1) is None


def test_memo_weighs_values_and_expires_by_value():
    memo = Memo(ttl=None, maxsize=10, stale_size=10, size=len)
    assert memo.get("big", lambda: "x" * 11, stale_ok=False) == "x" * 11  # heavier than the cache: not kept
    assert memo.fresh("big") is None and memo.stale("big") is None
    memo.get("a", lambda: "y" * 6, stale_ok=False)
    memo.get("b", lambda: "z" * 6, stale_ok=False)   # evicts "a": together they'd weigh 12
    assert memo.fresh("a") is None and memo.fresh("b") == "z" * 6
    timed = Memo(ttl=lambda value: value[1])
    assert timed.get("short", lambda: ("s", 0.0), stale_ok=False) == ("s", 0.0)
    assert timed.get("long", lambda: ("l", 60.0), stale_ok=False) == ("l", 60.0)
    assert timed.fresh("short") is None and timed.fresh("long") == ("l", 60.0)


@pytest.mark.parametrize("values", [{}, {"a": 1}, {"s": "ü \"q\" \\ \n", "n": None, "f": 2.5, "b": True},
                                    {"doc": '{"x": [1, {"y": 2}]}', "k": 3}, {"doc": "[]"}])
def test_row_json_is_the_indented_json_of_the_row(values):
    import json

    from djfs.relational.heading import Heading
    kinds = {"doc": ("longtext", "json"), "b": ("tinyint", "bool"), "f": ("double", None)}
    heading = Heading({name: attribute(name, *kinds.get(name, ("varchar(64)", None))) for name in values})
    document = views.row_json(heading, values)
    expected = {name: json.loads(value) if name == "doc" else value for name, value in values.items()}
    assert document == (json.dumps(expected, indent=2, ensure_ascii=False) + "\n").encode()


@pytest.mark.parametrize("attributes", [
    {"st_uid": 1000, "st_gid": 100, "st_atime": 1_795_986_326_123_456_789, "st_mtime": 1_795_986_326_000_000_001,
     "st_ctime": 1_795_986_326_999_999_999, "st_blksize": 1 << 20, "st_mode": 0o100444, "st_nlink": 1,
     "st_size": 192, "st_ino": (1 << 63) + 5, "st_blocks": 1},
    {"st_uid": 0, "st_gid": 0, "st_atime": 0, "st_mtime": 1_000_000_000, "st_ctime": 999_999_999,
     "st_blksize": 4096, "st_mode": 0o40555, "st_nlink": 2, "st_size": 0, "st_ino": 1}])
def test_readdirplus_fills_a_struct_stat_as_mfusepy_does(attributes):
    from djfs.fs.operations import fill_stat, mfusepy
    expected, filled = mfusepy.c_stat(), mfusepy.c_stat()
    mfusepy.set_st_attrs(expected, attributes, use_ns=True)
    fill_stat(filled, attributes)
    assert bytes(filled) == bytes(expected)
    assert filled.st_mtimespec.tv_sec == attributes["st_mtime"] // 10**9 and filled.st_ino == attributes["st_ino"]


STARTED = 1_795_986_326.25


@pytest.mark.parametrize("spec", [None, views.FileSpec("row.json", "json", 37, STARTED, 77, "json"),
                                  views.FileSpec("x.npy", "npy", 5 << 30, 1_700_000_000.123456, (1 << 62) + 3,
                                                 "external"),
                                  views.FileSpec("empty.bin", "bytes", 0, STARTED - 1.5, 9, "inline")])
def test_readdirplus_entries_from_templates_are_their_attributes(spec):
    """``fill_entry`` copies a template and sets what differs: the struct equals ``fill_stat`` of the entry's
    attributes byte for byte, for a directory, and files dated at the mount's start or not, empty or not."""
    import ctypes

    from djfs.fs.operations import Operations, fill_stat, mfusepy
    from djfs.fs.tree import Tree
    operations = Operations(MountOptions(uid=1234, gid=567), {})
    operations._tree = Tree(None)  # only its start time is read: no query
    operations._tree.started = STARTED
    expected, filled = mfusepy.c_stat(), mfusepy.c_stat()
    ctypes.memset(ctypes.byref(filled), 0xA5, ctypes.sizeof(filled))  # whatever a previous entry left there
    fill_stat(expected, operations.entry_attributes("/s/T", "k=1", spec))
    operations.fill_entry(filled, "/s/T", "k=1", spec)
    assert bytes(filled) == bytes(expected)


S3_SPEC = {"protocol": "s3", "endpoint": "s3.example.org", "bucket": "b", "access_key": "a", "secret_key": "s",
           "location": "dj"}


@pytest.mark.parametrize("settings, expected", [
    ({}, False),
    ({"external-location": "file:///data/store"}, False),
    ({"external-location": "s3://bucket/prefix"}, True),
    ({"external-location": "file:///data", "external-location-raw": "s3+http://127.0.0.1:9000/b"}, True),
    ({"stores": {"raw": {"protocol": "file", "location": "/data"}}}, False),
    ({"stores": {"raw": {"protocol": "file", "location": "/data"}, "cloud": S3_SPEC}}, True),
])
def test_the_mount_preloads_boto3_only_when_a_store_is_on_s3(settings, expected):
    config = Config()
    for key, value in settings.items():
        config[key] = value
    assert uses_s3(config) is expected

"""DataJoint 0.12-0.14's external types against the real DataJoint 0.14: pipelines written by DataJoint read through
djfs, pipelines written (and declared) by djfs read by DataJoint; tampered objects refused; gc as DataJoint's."""

from __future__ import annotations

import datetime
import hashlib
import re
import uuid
from pathlib import Path

import numpy as np
import pytest

import djfs
from djfs import cli
from djfs.objects.external_dj import datajoint_pack
from djfs.errors import CorruptObjectError, DataError, DjfsError
from djfs.stores import clear_store_cache

DEFINITION = """
session : int
---
movie = null : blob@local         # file store, subfolding (1, 1)
movie_s3 = null : blob@shared     # S3 store, default subfolding
doc = null : attach@local
doc_s3 = null : attach@shared
raw = null : filepath@local
raw_s3 = null : filepath@shared
note = null : attach
trace = null : longblob
"""
PART = """
-> master
roi : int
---
mask : blob@shared
"""

BLOBS = [np.arange(12.0).reshape(3, 4), np.zeros((200, 100), np.uint16), {"a": 1, "b": [1, 2, "x"]},
         "some text", np.random.default_rng(0).integers(0, 255, (64, 64, 5), dtype=np.uint8), 3.5,
         [1, 2, 3], datetime.date(2020, 1, 2)]


@pytest.fixture
def stores(dj, tmp_path, s3_server, monkeypatch):
    """The same two stores (file and S3) in DataJoint's and in djfs's configuration; their stage folders."""
    monkeypatch.setenv("DJ_SUPPORT_FILEPATH_MANAGEMENT", "TRUE")
    bucket = s3_server.create_bucket(f"dj-{uuid.uuid4().hex[:12]}")
    for name in ("local", "stage_local", "stage_shared"):
        (tmp_path / name).mkdir()
    account, secret = s3_server.credentials
    spec = {
        "local": {"protocol": "file", "location": str(tmp_path / "local"), "stage": str(tmp_path / "stage_local"),
                  "subfolding": [1, 1]},
        "shared": {"protocol": "s3", "endpoint": f"{s3_server.host}:{s3_server.port}", "bucket": bucket,
                   "access_key": account, "secret_key": secret, "location": "/dj/shared",
                   "stage": str(tmp_path / "stage_shared")},
    }
    dj.config["stores"] = {name: dict(value) for name, value in spec.items()}
    clear_store_cache()
    with djfs.config.override(stores=spec):
        yield spec
    clear_store_cache()


class Saved:
    """A file's name and bytes, kept while the file itself is removed."""

    def __init__(self, path: Path) -> None:
        self.name, self.data = path.name, path.read_bytes()


def make_file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sample_rows(tmp: Path, stores: dict, first: int) -> tuple[list[dict], list[dict]]:
    """Rows for Session and Session.Roi: every kind, the same attachment name twice, NULLs."""
    files = tmp / f"files{first}"
    rows = []
    for i in range(4):
        key = first + i
        rows.append({
            "session": key,
            "movie": BLOBS[i],
            "movie_s3": BLOBS[i + 4],
            "doc": make_file(files / str(i), "notes.txt", f"notes of session {key}\n".encode()),
            "doc_s3": make_file(files / str(i), "scan.bin", bytes(range(256)) * (i + 1)),
            "raw": make_file(Path(stores["local"]["stage"]) / f"s{key}", "data.dat", b"raw %d" % key * 100),
            "raw_s3": make_file(Path(stores["shared"]["stage"]) / f"s{key}" / "deep", "r.bin", b"s3 %d" % key),
            "note": make_file(files / str(i), "same name.txt", f"inline {key}".encode()),
            "trace": np.arange(i + 1.0),
        })
    rows.append({"session": first + 9, **{name: None for name in rows[0] if name != "session"}})  # all NULL
    parts = [{"session": first + i, "roi": r, "mask": np.full((4, 4), r + i, np.int32)}
             for i in range(2) for r in range(3)]
    return rows, parts


def pipeline(module, schema_name):
    """The test pipeline declared (or, when it exists, loaded) by ``module``: ``datajoint`` or ``djfs``."""
    schema = module.Schema(schema_name)

    @schema
    class Session(module.Manual):
        definition = DEFINITION

        class Roi(module.Part):
            definition = PART
    return schema, Session


def dj_pipeline(dj, schema_name):
    return pipeline(dj, schema_name)


def djfs_pipeline(schema_name):
    return pipeline(djfs, schema_name)


def same_name(got: str, name: str) -> bool:
    """``got`` is ``name`` or one of DataJoint's aliases of it (``notes_0001.txt`` for ``notes.txt``)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    return re.fullmatch(re.escape(stem) + r"(_[0-9a-f]{4})?" + re.escape(suffix), got) is not None


def assert_same_value(expected, got):
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype
    elif isinstance(expected, (Path, Saved)):
        assert isinstance(got, str)
        assert same_name(Path(got).name, expected.name)
        assert Path(got).read_bytes() == (expected.data if isinstance(expected, Saved) else expected.read_bytes())
    elif isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            assert_same_value(expected[key], got[key])
    elif isinstance(expected, list):
        assert len(got) == len(expected)
        for a, b in zip(expected, got):
            assert_same_value(a, b)
    else:
        assert got == expected


def compare(rows, fetched, stores):
    by_key = {row["session"]: row for row in fetched}
    count = 0
    for row in rows:
        got = by_key[row["session"]]
        for name in ("movie", "movie_s3", "doc", "doc_s3", "raw", "raw_s3", "note", "trace"):
            if row[name] is None:
                assert got[name] is None, name
                continue
            assert_same_value(row[name], got[name])
            count += 1
    return count


def test_a_datajoint_pipeline_reads_through_djfs(dj, stores, schema_name, tmp_path, monkeypatch):
    _, Session = dj_pipeline(dj, schema_name)
    rows, parts = sample_rows(tmp_path, stores, 1)
    Session.insert(rows)
    Session.Roi.insert(parts)
    # djfs reads what DataJoint wrote, with no class of its own (the tables exist)
    _, DSession = djfs_pipeline(schema_name)
    (tmp_path / "down").mkdir()
    monkeypatch.chdir(tmp_path / "down")   # download_path defaults to the working directory, as in DataJoint
    for row in rows:    # filepaths are fetched into the stage: remove the staged files, so djfs downloads them
        for name in ("raw", "raw_s3"):
            if name in row:
                if row[name] is not None:
                    staged, row[name] = row[name], Saved(row[name])
                    staged.unlink()
    fetched = DSession.fetch(as_dict=True)
    for row in fetched:
        if row["raw"] is not None:
            assert row["raw"] == str(Path(stores["local"]["stage"]) / f"s{row['session']}" / "data.dat")
    values = compare(rows, fetched, stores)
    values += sum(1 for _ in DSession.Roi.fetch("mask"))
    assert values == 4 * 8 + 6  # 38 stored values
    for got in DSession.fetch("doc", "note", as_dict=True):
        if got["doc"] is not None:
            assert Path(got["doc"]).absolute().parent == tmp_path / "down"
    # the same attachment name in several rows: DataJoint's alias names, each file the row's own
    notes = sorted(Path(p).name for p in DSession.fetch("note") if p is not None)
    assert notes == ["same name.txt", "same name_0000.txt", "same name_0001.txt", "same name_0002.txt"]
    # fetched again: the identical files are reused, no new copies
    before = sorted(p.name for p in (tmp_path / "down").iterdir())
    DSession.fetch(as_dict=True)
    assert sorted(p.name for p in (tmp_path / "down").iterdir()) == before
    masks = {(k["session"], k["roi"]): m for k, m in zip(*DSession.Roi.fetch("KEY", "mask"))}
    for part in parts:
        np.testing.assert_array_equal(masks[(part["session"], part["roi"])], part["mask"])
    # DataJoint's own fetch agrees with djfs on every value
    dj_rows = {r["session"]: r for r in Session.fetch(as_dict=True, download_path=str(tmp_path / "dj"))}
    for row in DSession.fetch(as_dict=True):
        for name in ("movie", "movie_s3", "trace"):
            assert_same_value(dj_rows[row["session"]][name], row[name])
        for name in ("doc", "doc_s3", "note", "raw", "raw_s3"):
            mine, theirs = row[name], dj_rows[row["session"]][name]
            assert (mine is None) == (theirs is None)
            if mine is not None:
                assert Path(mine).read_bytes() == Path(theirs).read_bytes()
                assert same_name(Path(mine).name, re.sub(r"_[0-9a-f]{4}\.", ".", Path(theirs).name))


def test_djfs_writes_what_datajoint_reads(dj, stores, schema_name, tmp_path):
    dj_pipeline(dj, schema_name)            # declared by DataJoint ...
    _, DSession = djfs_pipeline(schema_name)
    rows, parts = sample_rows(tmp_path, stores, 100)
    DSession.insert(rows)                   # ... filled by djfs
    DSession.Roi.insert(parts)
    schema = dj.Schema(schema_name)
    module = dj.VirtualModule("m", schema_name)
    fetched = module.Session.fetch(as_dict=True, download_path=str(tmp_path / "dj"))
    values = compare(rows, fetched, stores)
    assert values == 4 * 8
    masks = {(k["session"], k["roi"]): m for k, m in zip(*module.Session.Roi.fetch("KEY", "mask"))}
    for part in parts:
        np.testing.assert_array_equal(masks[(part["session"], part["roi"])], part["mask"])
    # the objects are where DataJoint puts them, named by MD5 as DataJoint names them; the same value is the
    # same object whoever stored it
    for value in BLOBS:
        assert datajoint_pack(value) == dj.blob.pack(value)
    packed = dj.blob.pack(rows[0]["movie"])
    digest = hashlib.md5(packed).hexdigest()
    assert (Path(stores["local"]["location"]) / schema_name / digest[0] / digest[1] / digest).read_bytes() == packed
    assert len(schema.external["local"]) == len(DSession.external["local"])


def test_a_djfs_declared_pipeline_is_a_datajoint_pipeline(dj, stores, schema_name, tmp_path):
    _, DSession = djfs_pipeline(schema_name)   # declared by djfs
    ddl = djfs.conn().query(f"SHOW CREATE TABLE `{schema_name}`.`~external_local`").fetchone()[1]
    assert "`hash` binary(16) NOT NULL COMMENT ':uuid:hash of contents (blob)" in ddl
    assert "`contents_hash` binary(16) DEFAULT NULL COMMENT ':uuid:used for the filepath datatype'" in ddl
    column = djfs.conn().query(f"SHOW FULL COLUMNS FROM `{schema_name}`.`session` WHERE Field = 'movie'",
                               as_dict=True).fetchone()
    assert (column["Type"], column["Comment"]) == ("binary(16)", ":blob@local:file store, subfolding (1, 1)")
    rows, parts = sample_rows(tmp_path, stores, 200)
    DSession.insert(rows)
    DSession.Roi.insert(parts)
    module = dj.VirtualModule("m", schema_name)
    heading = module.Session.heading
    assert heading["movie"].is_external and heading["doc_s3"].is_attachment and heading["raw"].is_filepath
    assert heading["note"].is_attachment and not heading["note"].is_external
    compare(rows, module.Session.fetch(as_dict=True, download_path=str(tmp_path / "dj")), stores)
    # DataJoint inserts into the djfs-declared tables, djfs reads them
    more, _ = sample_rows(tmp_path, stores, 300)
    module.Session.insert(more)
    compare(more, DSession.fetch(as_dict=True, download_path=str(tmp_path / "djfs")), stores)
    assert "movie = null : blob@local" in DSession.describe()


def test_tampered_objects_give_an_error_never_a_value(dj, stores, schema_name, tmp_path, s3_server):
    _, Session = dj_pipeline(dj, schema_name)
    rows, _ = sample_rows(tmp_path, stores, 1)
    Session.insert(rows[:1])
    _, DSession = djfs_pipeline(schema_name)
    digest = hashlib.md5(dj.blob.pack(rows[0]["movie"])).hexdigest()
    path = Path(stores["local"]["location"]) / schema_name / digest[0] / digest[1] / digest
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError, match="does not match its (hash|content digest)"):
        DSession.fetch1("movie")
    # an attachment on S3 replaced by other bytes of the same size
    name = hashlib.md5(b"scan.bin\0" + rows[0]["doc_s3"].read_bytes()).hexdigest()
    key = f"dj/shared/{schema_name}/{name[:2]}/{name[2:4]}/{name}.scan.bin"
    s3_server.client().put_object(Bucket=stores["shared"]["bucket"], Key=key, Body=b"\0" * 256)
    (tmp_path / "down").mkdir()
    with pytest.raises(CorruptObjectError, match="does not match its (hash|content digest)"):
        DSession.fetch1("doc_s3", download_path=str(tmp_path / "down"))
    assert list((tmp_path / "down").iterdir()) == []   # nothing half-written, nothing unverified
    # a missing object: a clear error too
    path.unlink()
    with pytest.raises(djfs.errors.MissingObjectError):
        DSession.fetch1("movie")


def test_gc_is_datajoints_and_agrees_with_datajoint(dj, stores, schema_name, tmp_path):
    schema, Session = dj_pipeline(dj, schema_name)
    rows, parts = sample_rows(tmp_path, stores, 1)
    Session.insert(rows)
    (Session & "session > 2").delete()
    dschema, DSession = djfs_pipeline(schema_name)
    for store in ("local", "shared"):
        assert sorted(dschema.external[store].unused()) == sorted(schema.external[store].unused().fetch("hash"))
        assert dschema.external[store].used()
    with pytest.raises(DjfsError, match="delete_external_files"):
        dschema.external["local"].delete()
    local = Path(stores["local"]["location"])
    before = {p for p in local.rglob("*") if p.is_file()}
    assert dschema.external["local"].delete(delete_external_files=True) == []
    after = {p for p in local.rglob("*") if p.is_file()}
    assert len(before - after) == 6 and len(after) == 6   # movie, doc, raw of 2 rows removed, of 2 kept
    assert len(schema.external["local"].unused()) == 0
    report = dschema.external["shared"].gc(dry_run=True)
    assert len(report.entries) == len(schema.external["shared"].unused()) > 0
    assert cli.main(["gc", schema_name, "--run", "--grace", "0"]) == 0
    assert len(schema.external["shared"].unused()) == 0
    compare(rows[:2], DSession.fetch(as_dict=True, download_path=str(tmp_path / "d")), stores)


def test_insert_refuses_bad_values_and_leaves_nothing(dj, stores, schema_name, tmp_path):
    _, DSession = djfs_pipeline(schema_name)
    outside = make_file(tmp_path, "outside.dat", b"x")
    with pytest.raises(DataError, match="not in stage"):
        DSession.insert1({"session": 1, "raw": outside})
    with pytest.raises(DataError, match="is not a file"):
        DSession.insert1({"session": 1, "doc": tmp_path / "nothing.txt"})
    assert len(DSession()) == 0
    staged = make_file(Path(stores["local"]["stage"]), "a.dat", b"one")
    DSession.insert1({"session": 1, "raw": staged})
    staged.write_bytes(b"two")
    with pytest.raises(DataError, match="A different version of 'a.dat'"):
        DSession.insert1({"session": 2, "raw": staged})
    assert len(DSession()) == 1


def test_datajoint_stores_configuration(tmp_path, monkeypatch):
    spec = {"protocol": "s3", "endpoint": "h:9000", "bucket": "b", "access_key": "AK", "secret_key": "SEKRIT",
            "location": "dj"}
    config = djfs.Config({"stores": {"raw": spec}})
    assert config["stores"]["raw"]["subfolding"] == (2, 2) and config["stores"]["raw"]["secure"] is False
    assert "SEKRIT" not in repr(config) and "SEKRIT" not in str(config.masked())
    for bad, message in [({**spec, "bucket_name": "x"}, "invalid key 'bucket_name'"),
                         ({k: v for k, v in spec.items() if k != "bucket"}, "missing 'bucket'"),
                         ({**spec, "protocol": "gcs"}, "invalid protocol"),
                         ({**spec, "subfolding": [2, -1]}, "subfolding"),
                         ({**spec, "secret_key": 5}, "secret_key")]:
        with pytest.raises(djfs.ConfigError, match=message) as error:
            config["stores"] = {"raw": bad}
        assert "SEKRIT" not in str(error.value)
    with pytest.raises(djfs.ConfigError, match="store name"):
        config["stores"] = {"Raw": spec}
    (tmp_path / "dj_local_conf.json").write_text('{"stores": {"raw": {"protocol": "file", "location": "/data"}}}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DJ_CONFIG", raising=False)
    assert djfs.settings.load_default()["stores"]["raw"]["location"] == "/data"


def test_a_failed_insert_leaves_no_row_and_no_entry(dj, stores, schema_name, tmp_path):
    schema, DSession = djfs_pipeline(schema_name)
    rows, _ = sample_rows(tmp_path, stores, 1)
    DSession.insert1(rows[0])
    entries = {store: len(schema.external[store]) for store in ("local", "shared")}
    # the same key again, with new values: objects are uploaded, then the transaction fails on the duplicate
    with pytest.raises(djfs.errors.DuplicateError):
        DSession.insert1({**rows[1], "session": rows[0]["session"]})
    assert {store: len(schema.external[store]) for store in ("local", "shared")} == entries
    assert all(not schema.external[store].unused() for store in ("local", "shared"))
    # a store that can't be written: nothing inserted, no entry
    with djfs.config.override(stores={**stores, "shared": {**stores["shared"], "bucket": "no-such-bucket"}}):
        clear_store_cache()
        with pytest.raises(djfs.errors.StoreError):
            DSession.insert1(rows[2])
    clear_store_cache()
    assert len(DSession()) == 1
    assert {store: len(schema.external[store]) for store in ("local", "shared")} == entries
    # what the failed inserts uploaded is an orphan: gc removes it (after the grace), and nothing else
    local = Path(stores["local"]["location"]) / schema_name   # blobs and attachments (filepaths: elsewhere)
    objects = {p for p in local.rglob("*") if p.is_file()}
    assert len(objects) == 6   # the first row's movie and doc, and the orphan movie and doc of two failed rows
    assert not schema.external["local"].gc(grace=3600).orphans
    report = schema.external["local"].gc(grace=0)
    assert not report.failed and len(report.orphans) == len(objects) - 2
    assert {p for p in local.rglob("*") if p.is_file()} == objects - {p for p in objects if p.name[:32] in
                                                                       report.orphans}
    compare(rows[:1], DSession.fetch(as_dict=True, download_path=str(tmp_path / "d")), stores)


# -- pure functions: DataJoint's names, checked against the facts of datajoint-python 0.14 ------------------------

@pytest.mark.parametrize("location, prefix", [("dj/store", "dj/store"), ("/dj/store", "dj/store"), ("", ""),
                                              ("/", ""), ("C:\\x", "x"), ("f:\\leading/slash\\test",
                                                                          "leading/slash/test"), ("a\\b", "a/b")])
def test_s3_locations_are_derooted_as_datajoint_does(location, prefix):
    from djfs.stores import datajoint_prefix
    assert datajoint_prefix(location) == prefix


def test_object_names_and_hashes_are_datajoints():
    from djfs.objects.external_dj import Entry, md5, subfold
    packed = datajoint_pack([1, 2, 3])
    assert packed.hex() == "646a3000" "02" "0300000000000000" + "".join(
        f"0400000000000000" "0a" "0100" f"{k:02x}" for k in (1, 2, 3))
    digest = md5([packed])
    assert digest.hex() == "4c16e9e15b64474e4b56ba22bb17faae"     # the golden vector of the research notes
    assert Entry(digest, len(packed)).key("lab", (2, 2)) == f"lab/4c/16/{digest.hex()}"
    assert Entry(digest, len(packed)).key("lab", (1, 1)) == f"lab/4/c/{digest.hex()}"
    assert Entry(digest, 1, attachment_name="a b.tar.gz").key("lab", ()) == f"lab/{digest.hex()}.a b.tar.gz"
    assert subfold("aBCdefg", (2, 3)) == ["ab", "cde"]
    path = "s1/raw.dat"
    assert Entry(md5([], path.encode()), 3, filepath=path).key("lab", (2, 2)) == path


@pytest.mark.parametrize("name, valid", [("lab/4c/16/abc.my file.txt", True), ("ü/x", True), ("a/../b", False),
                                         (".hidden", False), ("a/.x", False), ("a\\b", False), ("a//b", False),
                                         ("a/", False), ("x\0", False), ("a\nb", False)])
def test_datajoint_object_names_never_escape_a_store(tmp_path, name, valid):
    from djfs.stores import FileStore
    from djfs.stores.base import NAME_KEYS
    store = FileStore(tmp_path / "store", keys=NAME_KEYS)
    if valid:
        store.put(name, b"x")
        assert store.get(name) == b"x"
    else:
        with pytest.raises(ValueError, match="invalid object key"):
            store.put(name, b"x")
    assert not any(p.is_file() for p in tmp_path.iterdir())   # nothing outside the store's folder


def test_hostile_names_from_the_database_are_refused():
    from djfs.objects.external_dj import Entry
    digest = bytes(16)
    for row in [(digest, 1, "../x", None, None), (digest, 1, "a/b", None, None), (digest, 1, "..", None, None),
                (digest, 1, None, "../../etc/passwd", None), (digest, 1, None, "/abs", None),
                (digest, 1, None, "s1/raw.dat", None), (b"short", 1, None, None, None)]:
        with pytest.raises(CorruptObjectError):
            Entry.from_row(row)


def test_blobs_go_through_the_shared_cache(dj, stores, schema_name, tmp_path):
    _, Session = dj_pipeline(dj, schema_name)
    rows, _ = sample_rows(tmp_path, stores, 1)
    Session.insert1(rows[0])
    _, DSession = djfs_pipeline(schema_name)
    with djfs.config.override(**{"cache-location": str(tmp_path / "cache")}):
        first = DSession.fetch1("movie", "movie_s3")
        djfs.cache.open_cache(tmp_path / "cache", djfs.config["cache-size"]).flush()   # background fills done
        digest = hashlib.md5(dj.blob.pack(rows[0]["movie"])).hexdigest()
        (Path(stores["local"]["location"]) / schema_name / digest[0] / digest[1] / digest).unlink()
        again = DSession.fetch1("movie", "movie_s3")   # the file store's object is gone: served by the cache
    for value, one, two in zip((rows[0]["movie"], rows[0]["movie_s3"]), first, again):
        np.testing.assert_array_equal(one, value)
        np.testing.assert_array_equal(two, value)
    with pytest.raises(djfs.errors.MissingObjectError):   # without the cache: a clear error
        DSession.fetch1("movie")

"""External stores: the same behaviour from every backend (file system and S3 over HTTP via moto's server)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest

from djfs.errors import CorruptObjectError, MissingObjectError, StoreError
from djfs.stores import (FileStore, ObjectInfo, S3Store, clear_store_cache, open_store, parse_location,
                         validate_bucket, validate_folder)
from djfs.testing.s3 import free_port

MiB = 1 << 20
KEY = "ab/cd/abcdEFGH_ijkl-mnop"


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks_of(data: bytes, seed: int = 1, largest: int = 100_000):
    """``data`` cut into chunks of random sizes, yielded from one reused buffer (as a file reader would)."""
    rng = random.Random(seed)
    buffer = bytearray(largest)
    position = 0
    while position < len(data):
        count = min(rng.randint(1, largest), len(data) - position)
        buffer[:count] = data[position:position + count]
        yield memoryview(buffer)[:count]
        position += count


def leftovers(store) -> list[str]:
    """Anything a failed put may have left behind: temporary files, pending multipart uploads."""
    if isinstance(store, FileStore):
        if not store.root.exists():
            return []
        return sorted(os.path.relpath(os.path.join(d, f), store.root) for d, _, fs in os.walk(store.root) for f in fs)
    uploads = store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    objects = store._client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return [u["Key"] for u in uploads] + [o["Key"] for o in objects]


# -- every backend ------------------------------------------------------------------------------------------------

def test_put_get_and_ranges(store):
    data = data_of(100_000)
    store.put(KEY, data)
    assert store.exists(KEY)
    assert store.size(KEY) == len(data)
    assert store.get(KEY) == data
    assert store.get_range(KEY, 0, 10) == data[:10]
    assert store.get_range(KEY, 12_345, 50_000) == data[12_345:62_345]
    assert store.get_range(KEY, 99_990, 100) == data[99_990:]  # short at the end
    assert store.get_range(KEY, 100_000, 10) == b""  # past the end
    assert store.get_range(KEY, 500, 0) == b""
    buffer = bytearray(len(data))
    store.get_into(KEY, memoryview(buffer))
    assert buffer == data
    with pytest.raises(ValueError):
        store.get_range(KEY, -1, 10)


def test_bytes_like_inputs_and_overwrite(store):
    store.put("k1", bytearray(b"bytearray"))
    store.put("k2", memoryview(b"xxmemoryviewxx")[2:-2])
    store.put("k3", b"old")
    store.put("k3", b"new value", size=9)
    assert store.get("k1") == b"bytearray"
    assert store.get("k2") == b"memoryview"
    assert store.get("k3") == b"new value"


def test_empty_object(store):
    store.put(KEY, b"")
    assert store.exists(KEY)
    assert store.size(KEY) == 0
    assert store.get(KEY) == b""
    assert store.get_range(KEY, 0, 10) == b""
    store.get_into(KEY, memoryview(bytearray()))
    store.put("empty/stream", iter(()), size=0)
    assert store.get("empty/stream") == b""


def test_stream_put_of_many_chunks(store):
    data = data_of(1_500_000, seed=2)
    store.put("stream/known", chunks_of(data), size=len(data))
    store.put("stream/unknown", chunks_of(data, seed=3))
    assert store.get("stream/known") == data
    assert store.get("stream/unknown") == data


def test_stream_shorter_or_longer_than_announced_is_refused(store):
    with pytest.raises(StoreError, match="announced"):
        store.put("short", chunks_of(data_of(1000)), size=1001)
    with pytest.raises(StoreError, match="announced"):
        store.put("long", [b"x" * 600, b"y" * 600], size=1000)
    with pytest.raises(StoreError, match="announced"):
        store.put("bytes", b"abc", size=4)
    assert not store.exists("short") and not store.exists("long") and not store.exists("bytes")
    assert leftovers(store) == []


def test_missing_object(store):
    description = store.describe()
    for call in (lambda: store.get(KEY), lambda: store.get_range(KEY, 0, 10), lambda: store.get_range(KEY, 0, 0),
                 lambda: store.size(KEY), lambda: store.get_into(KEY, memoryview(bytearray(3)))):
        with pytest.raises(MissingObjectError) as caught:
            call()
        assert KEY in str(caught.value) and description in str(caught.value)
    assert not store.exists(KEY)
    store.remove(KEY)  # idempotent
    store.put(KEY, b"x")
    store.remove(KEY)
    store.remove(KEY)
    assert not store.exists(KEY)
    with pytest.raises(MissingObjectError):
        store.get(KEY)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a/./b", ".hidden", "a//b", "a/", "with space",
                                 "dot.ted", "back\\slash", "nul\0", "ü", "a" * 1025, None, 12, b"bytes"])
def test_invalid_keys_are_refused(store, key):
    calls = [lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.get_range(key, 0, 1),
             lambda: store.get_into(key, memoryview(bytearray(1))), lambda: store.size(key),
             lambda: store.exists(key), lambda: store.remove(key)]
    for call in calls:
        with pytest.raises(ValueError, match="invalid object key"):
            call()
    assert leftovers(store) == []


@pytest.mark.parametrize("prefix", ["/", "../", "a/../", "x.y"])
def test_invalid_list_prefixes_are_refused(store, prefix):
    with pytest.raises(ValueError, match="invalid listing prefix"):
        list(store.list(prefix))


def test_list(store):
    assert list(store.list()) == []
    keys = ["ab/cd/one", "ab/cd/two", "ab/ce/three", "ab-x", "zz/top", "ab/c"]
    before = time.time()
    for index, key in enumerate(keys):
        store.put(key, b"x" * index)
    listed = list(store.list())
    assert all(isinstance(info, ObjectInfo) for info in listed)
    assert [info.key for info in listed] == sorted(keys)  # plain lexicographic order, on every backend
    sizes = {info.key: info.size for info in listed}
    assert sizes == {key: index for index, key in enumerate(keys)}
    assert all(before - 5 <= info.mtime <= time.time() + 5 for info in listed)
    assert [info.key for info in store.list("ab/cd/")] == ["ab/cd/one", "ab/cd/two"]
    assert [info.key for info in store.list("ab/c")] == ["ab/c", "ab/cd/one", "ab/cd/two", "ab/ce/three"]
    assert [info.key for info in store.list("ab")] == ["ab-x", "ab/c", "ab/cd/one", "ab/cd/two", "ab/ce/three"]
    assert list(store.list("nothing/")) == []
    store.remove("zz/top")
    assert "zz/top" not in [info.key for info in store.list()]


def test_failing_stream_leaves_no_object(store):
    def failing(total: int):
        yield from chunks_of(data_of(total))
        raise RuntimeError("source broke")

    # small (one PUT on S3) and larger than the multipart threshold (parts uploaded, then aborted)
    for total in (300_000, 11 * MiB):
        with pytest.raises(RuntimeError, match="source broke"):
            store.put(KEY, failing(total))
        assert not store.exists(KEY)
        assert list(store.list()) == []
        assert leftovers(store) == []
    # a failed overwrite leaves the old object intact
    store.put(KEY, b"old object")
    with pytest.raises(RuntimeError, match="source broke"):
        store.put(KEY, failing(11 * MiB))
    assert store.get(KEY) == b"old object"


def test_get_into_needs_a_buffer_of_the_object_size(store):
    store.put(KEY, b"0123456789")
    for wrong in (9, 11):
        with pytest.raises(CorruptObjectError, match="10 bytes"):
            store.get_into(KEY, memoryview(bytearray(wrong)))


def test_large_object(store):
    """Above the (test) multipart threshold: multipart upload and parallel ranged reads on S3."""
    data = data_of(13 * MiB + 12_345, seed=5)
    store.put("big/stream", chunks_of(data, largest=3 * MiB), size=len(data))
    store.put("big/bytes", data)
    for key in ("big/stream", "big/bytes"):
        assert store.size(key) == len(data)
        buffer = bytearray(len(data))
        store.get_into(key, memoryview(buffer))
        assert buffer == data
        boundary = 5 * MiB  # a part boundary of the S3 test store
        assert store.get_range(key, boundary - 100, 200) == data[boundary - 100:boundary + 100]
    assert store.get("big/bytes") == data


def test_parallel_puts_and_gets(store):
    errors = []
    objects = {f"t{thread}/obj{index}": data_of(1000 + index * 37, seed=thread * 100 + index)
               for thread in range(8) for index in range(12)}

    def work(thread: int) -> None:
        try:
            mine = {key: value for key, value in objects.items() if key.startswith(f"t{thread}/")}
            for key, value in mine.items():
                store.put(key, value)
            for key, value in mine.items():
                assert store.get(key) == value
                assert store.get_range(key, 10, 20) == value[10:30]
                assert store.size(key) == len(value)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {info.key for info in store.list()} == set(objects)


def test_repr_and_describe(store):
    from djfs.testing.s3 import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY
    assert type(store).__name__ in repr(store)
    assert store.describe().startswith(("file:///", "s3://"))
    for text in (repr(store), str(store), store.describe(), repr(vars(store))):
        assert DUMMY_SECRET_KEY not in text and DUMMY_ACCESS_KEY not in text


# -- file system ---------------------------------------------------------------------------------------------

def test_file_store_never_shows_a_partial_object(tmp_path):
    store = FileStore(tmp_path / "store")
    final = tmp_path / "store" / KEY
    seen = []

    def watched():
        for index in range(50):
            seen.append((final.exists(), [info.key for info in store.list()]))
            yield b"z" * 10_000

    store.put(KEY, watched())
    assert seen and all(state == (False, []) for state in seen)
    assert final.read_bytes() == b"z" * 500_000
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # no temporary left
    umask = os.umask(0o022)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes: readable by the team


def test_file_store_refuses_an_unmounted_location(tmp_path):
    store = FileStore(tmp_path / "not-mounted" / "folder")
    with pytest.raises(StoreError, match="does not exist"):
        store.put(KEY, b"x")
    assert not (tmp_path / "not-mounted").exists()
    FileStore(tmp_path / "folder").put(KEY, b"x")  # the folder itself is created on demand
    assert (tmp_path / "folder" / KEY).read_bytes() == b"x"


def test_file_store_lists_only_objects(tmp_path):
    store = FileStore(tmp_path)
    store.put("ab/cd/good", b"1")
    (tmp_path / "README.txt").write_text("not an object")
    (tmp_path / "ab" / "cd" / ".good.0123.tmp").write_bytes(b"partial")
    assert [info.key for info in store.list()] == ["ab/cd/good"]
    with pytest.raises(ValueError):
        FileStore("relative/path")


def test_file_store_write_error_is_a_store_error(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "ab").write_text("a file where a directory should be")
    store = FileStore(root)
    with pytest.raises(StoreError, match=str(root)):
        store.put("ab/cd/x", b"data")


# -- S3 --------------------------------------------------------------------------------------------------------

def test_s3_multipart_upload_is_used_above_the_threshold(s3_server, s3_bucket):
    store = s3_server.store(s3_bucket, multipart_threshold=6 * MiB, part_size=5 * MiB)
    data = data_of(12 * MiB, seed=9)
    store.put("mp/stream", chunks_of(data, largest=MiB))
    store.put("mp/bytes", memoryview(data))
    store.put("single", data[:6 * MiB - 1])
    client = s3_server.client()
    assert client.head_object(Bucket=s3_bucket, Key="mp/stream")["ETag"].endswith('-3"')
    assert client.head_object(Bucket=s3_bucket, Key="mp/bytes")["ETag"].endswith('-3"')
    assert "-" not in client.head_object(Bucket=s3_bucket, Key="single")["ETag"]
    assert store.get("mp/stream") == data and store.get("mp/bytes") == data
    with pytest.raises(ValueError):
        s3_server.store(s3_bucket, part_size=MiB)


def test_s3_missing_bucket_is_a_clear_error(s3_server):
    store = s3_server.store("djfs-no-such-bucket")
    for call in (lambda: store.put(KEY, b"x"), lambda: store.get(KEY), lambda: store.exists(KEY),
                 lambda: store.size(KEY), lambda: list(store.list())):
        with pytest.raises(StoreError, match="djfs-no-such-bucket.*does not exist") as caught:
            call()
        assert not isinstance(caught.value, MissingObjectError)
    store.create_bucket()
    store.create_bucket()  # idempotent
    store.put(KEY, b"x")
    assert store.get(KEY) == b"x"


def test_s3_prefix_isolates_objects(s3_server, s3_bucket):
    store = s3_server.store(s3_bucket, "lab/raw")
    other = s3_server.store(s3_bucket, "lab")
    store.put(KEY, b"inside")
    s3_server.client().put_object(Bucket=s3_bucket, Key="lab/raw/not.a.key", Body=b"foreign")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=f"lab/raw/{KEY}")["Body"].read() == b"inside"
    assert [info.key for info in store.list()] == [KEY]
    assert [info.key for info in other.list()] == [f"raw/{KEY}"]
    assert not other.exists(KEY)


SECRET = "zebra-SECRET-token-9f8e7d6c5b4a"
ACCESS = "AKIADJFSDISTINCTIVE42"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and ACCESS not in text, text


def error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(error)


def test_s3_credentials_never_shown(s3_server, s3_bucket):
    store = S3Store(s3_bucket, "p", s3_server.endpoint, "us-east-1", ACCESS, SECRET, timeout=5, retries=0)
    store.put(KEY, b"x")  # moto accepts any credentials: they are really used
    assert_no_secret(repr(store), str(store), store.describe(), repr(vars(store)))
    texts = []
    with pytest.raises(MissingObjectError) as caught:
        store.get("ab/cd/missing")
    texts.append(error_text(caught.value))
    with pytest.raises(StoreError) as caught:
        S3Store("djfs-absent-bucket", "", s3_server.endpoint, None, ACCESS, SECRET, timeout=5, retries=0).get(KEY)
    texts.append(error_text(caught.value))
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreError) as caught:
        S3Store(s3_bucket, "", dead, None, ACCESS, SECRET, timeout=1, retries=0).get(KEY)
    texts.append(error_text(caught.value))
    with pytest.raises(StoreError) as caught:
        open_store(f"s3://{ACCESS}:{SECRET}@example.com/x", "bucket")
    texts.append(error_text(caught.value))
    clear_store_cache()
    opened = open_store(s3_server.location("p"), s3_bucket, ACCESS, SECRET)
    assert opened.get(KEY) == b"x"
    from djfs.stores import _cache
    texts += [repr(opened), repr(_cache), repr(list(_cache.keys()))]
    assert_no_secret(*texts)


def read_two_ranges(store: S3Store) -> int:
    """Put an object, read two ranges of it with ``open_range`` (checked), and return how many of them went
    through botocore's ``get_object``."""
    data = bytes(range(256)) * 100
    store.put(KEY, data)
    calls = []
    store._client.meta.events.register("before-call.s3.GetObject", lambda **_: calls.append(1))
    with store.open_range(KEY, 300, 1000) as stream:
        assert stream.read_exact(1000) == data[300:1300]
    with store.open_range(KEY, 25000) as stream:
        assert stream.read_exact(600) == data[25000:]
    return len(calls)


def test_s3_ranged_reads_skip_botocores_pipeline_and_never_show_their_signed_url(s3_server, s3_bucket):
    """``open_range`` (the mount's many small GETs) sends presigned GETs through the client's pool, not
    ``get_object``; its errors say what went wrong without the URL, which carries a signature."""
    store = S3Store(s3_bucket, "p", s3_server.endpoint, "us-east-1", ACCESS, SECRET, timeout=5, retries=0)
    assert read_two_ranges(store) == 0
    texts = []
    with pytest.raises(MissingObjectError) as caught:
        store.open_range("ab/cd/missing", 0, 10)
    texts.append(error_text(caught.value))
    absent = S3Store("djfs-absent-bucket", "", s3_server.endpoint, None, ACCESS, SECRET, timeout=5, retries=0)
    with pytest.raises(StoreError, match="does not exist") as caught:
        absent.open_range(KEY, 0, 10)
    assert not isinstance(caught.value, MissingObjectError)
    texts.append(error_text(caught.value))
    dead = S3Store(s3_bucket, "", f"http://127.0.0.1:{free_port()}", None, ACCESS, SECRET, timeout=1, retries=1)
    with pytest.raises(StoreError, match="127.0.0.1") as caught:
        dead.open_range(KEY, 0, 10)
    texts.append(error_text(caught.value))
    assert_no_secret(*texts)
    assert not any("Signature" in text or "X-Amz" in text for text in texts), texts


def test_s3_ranged_reads_fall_back_to_get_object_when_botocore_lacks_its_session(s3_server, s3_bucket,
                                                                                    monkeypatch):
    """The presigned path uses botocore's ``client._endpoint.http_session`` (not public API): a botocore without
    it still reads every range, through ``get_object``, with the same errors."""
    store = S3Store(s3_bucket, "p", s3_server.endpoint, "us-east-1", ACCESS, SECRET, timeout=5, retries=0)

    class Reshaped:  # botocore's endpoint as a botocore of another shape would have it: no ``http_session``
        def __init__(self, real: object) -> None:
            self._real = real

        def __getattr__(self, name: str) -> object:
            if name == "http_session":
                raise AttributeError(name)
            return getattr(self._real, name)
    monkeypatch.setattr(store._client, "_endpoint", Reshaped(store._client._endpoint))
    assert read_two_ranges(store) == 2
    with pytest.raises(MissingObjectError):
        store.open_range("ab/cd/missing", 0, 10)


def test_s3_clients_share_one_session_preloaded_and_keep_their_own_credentials(s3_server, s3_bucket, monkeypatch):
    """After ``preload()`` (the mount does it before it answers a read), a store's first client loads none of
    botocore's model files: one boto3 session per process; each client keeps its store's credentials and
    endpoint."""
    import botocore.loaders

    from djfs.stores import s3
    s3.preload()
    loads = []  # botocore's model and endpoint files read from disk
    original = botocore.loaders.JSONFileLoader.load_file
    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file",
                        lambda self, path: loads.append(path) or original(self, path))
    good = S3Store(s3_bucket, "p", s3_server.endpoint, "us-east-1", ACCESS, SECRET, timeout=5, retries=0)
    other = S3Store(s3_bucket, "q", f"http://127.0.0.1:{free_port()}", "eu-west-1", "AKIAOTHERKEY", "other-secret",
                    timeout=1, retries=0)
    good.put(KEY, b"shared session")
    assert good.get(KEY) == b"shared session"
    assert loads == []
    credentials = [store._client._request_signer._credentials for store in (good, other)]
    assert [(c.access_key, c.secret_key) for c in credentials] == [(ACCESS, SECRET), ("AKIAOTHERKEY", "other-secret")]
    assert [store._client.meta.region_name for store in (good, other)] == ["us-east-1", "eu-west-1"]
    assert other._client.meta.endpoint_url == other.endpoint_url


def test_s3_ranged_reads_of_a_key_reuse_its_presigned_url_and_a_refused_one_is_signed_again(s3rver, monkeypatch):
    """The mount's ranged GETs of one key reuse its presigned URL (the range is not signed): one signature for
    many reads, one per key; after ``PRESIGNED_REUSE`` a new one; a reused URL refused with 403 (credentials
    rotated) is signed anew once, without spending a retry.  s3rver checks signatures."""
    from djfs.stores import s3
    store = s3rver.store(s3rver.create_bucket(f"djfs-presign-{uuid.uuid4().hex[:8]}"), "p", retries=0)
    data = bytes(range(256)) * 400
    store.put(KEY, data)
    store.put("ab/cd/other", data[:1000])
    signed = []
    client = store._client
    original = client.generate_presigned_url
    monkeypatch.setattr(client, "generate_presigned_url", lambda *a, **k: signed.append(k["Params"]["Key"]) or
                        original(*a, **k))

    def read(key: str, offset: int, length: int) -> bytes:
        with store.open_range(key, offset, length) as stream:
            return stream.read_exact(length)
    for offset in range(0, 50_000, 10_000):
        assert read(KEY, offset, 5000) == data[offset:offset + 5000]
    assert read("ab/cd/other", 10, 100) == data[10:110]
    assert signed == ["p/" + KEY, "p/ab/cd/other"]
    with store._lock:                                   # the kept URL's signature no longer holds
        store._urls["p/" + KEY] = store._urls["p/" + KEY].replace("Signature=", "Signature=AAAA")
    assert read(KEY, 7, 70) == data[7:77]
    assert signed[2:] == ["p/" + KEY]
    monkeypatch.setattr(store, "_urls", s3.TTLCache(maxsize=s3.PRESIGNED_KEPT, ttl=0.05))
    assert read(KEY, 0, 10) == data[:10]
    time.sleep(0.1)
    assert read(KEY, 0, 10) == data[:10]
    assert signed[3:] == ["p/" + KEY] * 2


def test_s3_unreachable_endpoint_fails_in_bounded_time():
    closed = S3Store("some-bucket", "", f"http://127.0.0.1:{free_port()}", None, "a", "b", timeout=1, retries=1)
    start = time.monotonic()
    with pytest.raises(StoreError, match="127.0.0.1"):
        closed.get(KEY)
    with pytest.raises(StoreError):
        closed.put(KEY, b"x")
    assert time.monotonic() - start < 10


def test_s3_silent_endpoint_times_out():
    """A server that accepts connections and never answers: the read timeout must fire (no hang)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        silent = S3Store("some-bucket", "", f"http://127.0.0.1:{port}", None, "a", "b", timeout=0.5, retries=1)
        start = time.monotonic()
        with pytest.raises(StoreError, match="(?i)timeout|timed out"):
            silent.exists(KEY)
        assert time.monotonic() - start < 10


def test_s3_server_restart(s3_server):
    """The backend goes away and comes back: errors while it is down, service again after."""
    store = s3_server.store("djfs-restart", timeout=2, retries=0)
    store.create_bucket()
    store.put(KEY, b"before")
    s3_server.stop()
    try:
        start = time.monotonic()
        with pytest.raises(StoreError):
            store.get(KEY)
        assert time.monotonic() - start < 10
    finally:
        s3_server.restart()
    store.create_bucket()  # moto keeps buckets in memory
    store.put(KEY, b"after")
    assert store.get(KEY) == b"after"


# -- locations ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("location, expected", [
    ("file:///data/external", {"kind": "file", "root": Path("/data/external/lab")}),
    ("file://localhost/data/my%20ext/", {"kind": "file", "root": Path("/data/my ext/lab")}),
    ("s3://s3.eu-west-1.amazonaws.com/djfs?region=eu-west-1",
     {"kind": "s3", "bucket": "lab", "prefix": "djfs", "endpoint_url": "https://s3.eu-west-1.amazonaws.com",
      "region": "eu-west-1"}),
    ("s3://minio.example.org:9000",
     {"kind": "s3", "bucket": "lab", "prefix": "", "endpoint_url": "https://minio.example.org:9000",
      "region": None}),
    ("s3+https://minio.example.org/a/b/",
     {"kind": "s3", "bucket": "lab", "prefix": "a/b", "endpoint_url": "https://minio.example.org",
      "region": None}),
    ("s3+http://127.0.0.1:9000/pre",
     {"kind": "s3", "bucket": "lab", "prefix": "pre", "endpoint_url": "http://127.0.0.1:9000", "region": None}),
    ("s3:///pre/fix", {"kind": "s3", "bucket": "lab", "prefix": "pre/fix", "endpoint_url": None, "region": None}),
    ("s3:///", {"kind": "s3", "bucket": "lab", "prefix": "", "endpoint_url": None, "region": None}),
])
def test_parse_location(location, expected):
    assert parse_location(location, "lab") == expected


@pytest.mark.parametrize("location, folder, message", [
    ("/data/external", "lab", "no scheme"),
    ("gs://bucket/x", "lab", "unknown scheme"),
    ("file://server/share", "lab", "host"),
    ("file:///data/../etc", "lab", r"'\.\.'"),
    ("file:///data?x=1", "lab", "query"),
    ("file:///data", "a/b", "invalid folder"),
    ("file:///data", "..", "invalid folder"),
    ("file:///data", "", "invalid folder"),
    ("s3+http:///prefix", "lab", "needs a host"),
    ("s3://host/x?color=red", "lab", "unknown option"),
    ("s3://host/a..b", "lab", "invalid key prefix"),
    ("s3://host:notaport/x", "lab", "malformed"),
    ("s3://someone:hunter2@host/x", "lab", "credentials don't belong"),
    ("s3://host", "ab", "invalid S3 bucket"),
    ("s3://host", "Upper", "invalid S3 bucket"),
    ("s3://host", "under_score", "invalid S3 bucket"),
    ("s3://host", "192.168.1.10", "invalid S3 bucket"),
    ("s3://host", "a..b", "invalid S3 bucket"),
    ("s3://host", "xn--bucket", "invalid S3 bucket"),
    ("s3://host", "-bucket", "invalid S3 bucket"),
])
def test_bad_locations_are_refused(location, folder, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_location(location, folder)
    assert isinstance(caught.value, StoreError)
    assert "hunter2" not in str(caught.value) and "someone" not in str(caught.value)


def test_bucket_and_folder_validation():
    for good in ("my-bucket", "lab.data-2024", "abc", "a" * 63):
        assert validate_bucket(good) == good
    with pytest.raises(ValueError):
        validate_bucket("a" * 64)
    for good in ("lab", "Lab_Data-2024", "with.dot"):
        assert validate_folder(good) == good


def test_open_store_reuses_instances(tmp_path, s3_server, s3_bucket):
    clear_store_cache()
    location = f"file://{tmp_path}"
    first = open_store(location, "lab")
    assert isinstance(first, FileStore) and first.root == tmp_path / "lab"
    assert open_store(location, "lab") is first
    assert open_store(location, "other") is not first
    account, token = s3_server.credentials
    s3 = open_store(s3_server.location("pre"), s3_bucket, account, token, timeout=5, retries=1)
    assert isinstance(s3, S3Store) and s3.prefix == "pre" and s3.bucket == s3_bucket
    assert open_store(s3_server.location("pre"), s3_bucket, account, token, timeout=5, retries=1) is s3
    s3.put(KEY, b"through open_store")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=f"pre/{KEY}")["Body"].read() == b"through open_store"
    with pytest.raises(StoreError, match="both"):
        open_store(s3_server.location(), s3_bucket, account, None)
    with pytest.raises(StoreError, match="no external-account"):
        open_store(location, "lab", "someone", "secret")


def test_a_directory_is_not_an_object(store):
    store.put("ab/cd/x", b"1")
    for call in (lambda: store.get("ab/cd"), lambda: store.size("ab/cd"), lambda: store.get_range("ab/cd", 0, 1),
                 lambda: store.get_into("ab/cd", memoryview(bytearray(4096)))):
        with pytest.raises(MissingObjectError):
            call()
    assert not store.exists("ab/cd")


def test_open_range_streams_exact_pieces(store):
    data = bytes(range(256)) * 64
    store.put("ab/cd/streamed", data)
    with store.open_range("ab/cd/streamed", 1000) as stream:
        assert stream.read_exact(10) == data[1000:1010]
        assert stream.read_exact(5000) == data[1010:6010]
    with store.open_range("ab/cd/streamed") as stream:
        assert stream.read_exact(len(data)) == data
    with store.open_range("ab/cd/streamed", 100, 50) as stream:
        assert stream.read_exact(50) == data[100:150]
    with pytest.raises(CorruptObjectError):
        with store.open_range("ab/cd/streamed", len(data) - 10) as stream:
            stream.read_exact(20)

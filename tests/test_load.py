"""Sustained load through a real mount: eight readers, 200 files of mixed sizes and views on S3, a cache smaller
than the data.  Nothing may fail, every byte must be what ``fetch`` returns, the cache must hold its bound and the
daemon's memory must stay bounded and flat.

Environment: ``DJFS_LOAD_SECONDS`` sets how long the readers run (default 60); ``DJFS_LOAD_TRACE=FILE`` writes the
samples of the daemon's RSS and the cache's size there (JSON lines); ``DJFS_LOAD_OPTIONS=opt,opt`` adds mount
options.  The figures (reads, bytes verified, peak RSS, cache peak against its limit) are recorded with
``record_property`` for ``scripts/robustness_report.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest

import djfs
from djfs.testing.s3 import MotoServer
from fixtures_fuse import module_schema, s3_config
from test_mount_faults import expected_file

MiB = 1 << 20
LOAD_SECONDS = float(os.environ.get("DJFS_LOAD_SECONDS", "60"))
READERS = 8
CHUNK = 1 * MiB                   # granularity of the expected-content digests
CACHE_LIMIT = 384 * MiB           # about a third of the data: eviction all along
WHOLE_MAX = 64 * MiB              # the mount's default: larger objects are read by blocks
#: the daemon's block memory (half the default) and the bound on its RSS: the budget, plus room for 8 readers'
#: transient buffers and values being decoded (decoded files live in the disk cache), Python, boto3, glibc's heap
BLOCK_MEMORY = 128 * MiB
RSS_LIMIT = 1 << 30
EXTENSIONS = {"npy": ".npy", "npy-packed": ".npy", "bytes": ".bin", "blob": ".blob", "blob-packed": ".blob"}


@dataclass
class Expected:
    """What one file of the mount must hold: its size, the SHA-256 of all of it and of each CHUNK."""

    path: Path
    kind: str
    size: int
    digest: str
    chunks: list[str] = field(repr=False)


def plan(rng: np.random.Generator) -> list[tuple[str, int]]:
    """(kind, approximate size in bytes) of the 200 values: many small, some medium and large, four huge.

    npy: random float32 (stored uncompressed: the file is a byte range of the object); npy-packed: a
    compressible array (stored compressed, decoded once by the daemon); bytes: random bytes (.bin, a range);
    blob: a dict with a random trace (.blob, a range); blob-packed: a compressible dict (.blob, decoded)."""
    sizes: list[tuple[str, int]] = []
    small = ["npy", "bytes", "blob", "npy-packed", "blob-packed"]
    for i in range(124):
        sizes.append((small[i % len(small)], int(np.exp(rng.uniform(np.log(4 << 10), np.log(512 << 10))))))
    medium = ["npy", "bytes", "npy", "npy-packed", "blob"]
    for i in range(56):
        size = int(np.exp(rng.uniform(np.log(1 * MiB), np.log(16 * MiB))))
        kind = medium[i % len(medium)]
        sizes.append((kind, min(size, 8 * MiB) if kind == "npy-packed" else size))
    for i in range(16):
        sizes.append(("npy" if i % 3 else "bytes", int(rng.uniform(16, 32) * MiB)))
    sizes += [("npy", 80 * MiB), ("bytes", 100 * MiB), ("npy", 128 * MiB), ("npy", 200 * MiB)]
    return sizes


def make_value(kind: str, size: int, rng: np.random.Generator):
    if kind == "npy":
        count = max(1, size // 4)
        return rng.random(count, dtype=np.float32).reshape((-1, 16) if count % 16 == 0 else (count,))
    if kind == "npy-packed":
        return (np.arange(max(1, size // 2), dtype=np.int16) % 17).reshape(-1)
    if kind == "bytes":
        return rng.bytes(size)
    if kind == "blob":
        return {"trace": rng.standard_normal(max(1, size // 8)), "label": "blob", "n": size}
    return {"zeros": np.zeros(max(1, size // 8)), "label": "packed", "n": size}


def digests(content: bytes) -> tuple[str, list[str]]:
    view = memoryview(content)
    return (hashlib.sha256(view).hexdigest(),
            [hashlib.sha256(view[i:i + CHUNK]).hexdigest() for i in range(0, max(len(view), 1), CHUNK)])


def cache_usage(location: Path) -> tuple[int, int, int]:
    """(bytes under objects/ and blocks/, number of those files, bytes under tmp/)."""
    kept = files = 0
    for top in ("objects", "blocks"):
        for directory, _, names in os.walk(location / top):
            for name in names:
                try:
                    kept += os.stat(os.path.join(directory, name)).st_size
                    files += 1
                except FileNotFoundError:
                    pass  # evicted while we looked
    temporary = 0
    for entry in os.scandir(location / "tmp") if (location / "tmp").exists() else []:
        try:
            temporary += entry.stat().st_size
        except FileNotFoundError:
            pass
    return kept, files, temporary


def settled_usage(location: Path, quiet: float = 0.5, limit: float = 15.0) -> tuple[int, int, int]:
    """``cache_usage`` once the daemon's background cache writer is done: fills are written after the reader
    has its bytes, so right after the readers end a few may still be landing (and evicting)."""
    usage, deadline = cache_usage(location), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cache_usage(location)
        if now == usage:
            break
        usage = now
    return usage


@pytest.fixture(scope="module")
def loaded(mariadb, module_mounts, tmp_path_factory):
    """200 values (~1.2 GiB) in a dedicated moto server, the SHA-256 digests of the files they must show (from
    ``fetch``), and a mount with a cache of a third of that."""
    server = MotoServer().start()
    root = tmp_path_factory.mktemp("load")
    account, token = server.credentials
    settings = {"external-location": server.location("load"), "external-account": account,
                "external-token": token, "cache-location": None}
    try:
        bucket = server.create_bucket(f"djfs-load-{uuid.uuid4().hex[:12]}")
        with module_schema(mariadb, "load", settings, bucket) as lab:
            schema, name = lab.schema, lab.name

            @schema
            class Value(djfs.Manual):
                definition = """
                k : int
                ---
                kind : varchar(16)
                value : external
                """
            rng = np.random.default_rng(2024)
            expected: dict[int, tuple[str, int, str, list[str]]] = {}
            for k, (kind, size) in enumerate(plan(rng)):
                Value.insert1({"k": k, "kind": kind, "value": make_value(kind, size, rng)})
                content = expected_file((Value & {"k": k}).fetch1("value"))
                expected[k] = (kind, len(content), *digests(content))
                del content
            mount = module_mounts.mount(
                s3_config(server, "load", **{"store-timeout": 30, "store-retries": 2})
                | {"cache-location": str(root / "cache")},
                [f"schemas={name}", f"cache_size={CACHE_LIMIT}", f"whole_max={WHOLE_MAX}",
                 f"block_memory={BLOCK_MEMORY}"] + [o for o in os.environ.get("DJFS_LOAD_OPTIONS", "").split(",") if o])
            table = mount.path(name, "Value")
            files = []
            for k, (kind, size, digest, chunks) in expected.items():
                path = table / f"k={k}" / f"value{EXTENSIONS[kind]}"
                assert path.stat().st_size == size, (path, size)
                files.append(Expected(path, kind, size, digest, chunks))
            yield mount, files, root / "cache"
    finally:
        server.__exit__(None, None, None)


class Load:
    """Eight readers, each picking a file at random and reading it whole or at random ranges, verifying every
    byte against the digests; after each file, its pages are dropped from the kernel's page cache so the next
    read goes to the daemon again."""

    def __init__(self, files: list[Expected], seconds: float) -> None:
        self.files = files
        self.until = time.monotonic() + seconds
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.reads = 0
        self.operations = 0
        self.verified = 0
        self.by_kind: dict[str, int] = {}

    def count(self, reads: int, verified: int, kind: str) -> None:
        with self.lock:
            self.reads += reads
            self.verified += verified
            self.operations += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < self.until and len(self.errors) < 20:
            file = rng.choice(self.files)
            whole = file.size <= 2 * MiB or rng.random() < 0.35
            try:
                with open(file.path, "rb", buffering=0) as handle:
                    fd = handle.fileno()
                    if whole:
                        reads, verified = self.read_whole(fd, file)
                    else:
                        reads, verified = self.read_ranges(fd, file, rng)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                self.count(reads, verified, f"{file.kind} {'whole' if whole else 'ranges'}")
            except Exception as error:  # noqa: BLE001 - every failure is a finding
                with self.lock:
                    self.errors.append(f"{file.path.name} of {file.path.parent.name} ({file.kind}, {file.size} "
                                       f"bytes, {'whole' if whole else 'ranges'}): {error!r}")

    @staticmethod
    def read_whole(fd: int, file: Expected) -> tuple[int, int]:
        state = hashlib.sha256()
        reads = total = 0
        while True:
            data = os.read(fd, CHUNK)
            reads += 1
            if not data:
                break
            state.update(data)
            total += len(data)
        if total != file.size or state.hexdigest() != file.digest:
            raise AssertionError(f"whole read: {total} bytes, digest {'ok' if state.hexdigest() == file.digest else 'WRONG'}")
        return reads, total

    @staticmethod
    def read_ranges(fd: int, file: Expected, rng: random.Random) -> tuple[int, int]:
        """Random ranges (1 byte to 4 MiB, unaligned): each read, then its chunk-aligned surroundings read and
        checked against the chunk digests, and the range compared with them."""
        reads = verified = 0
        for _ in range(rng.randint(2, 6)):
            offset = rng.randrange(file.size)
            length = min(file.size - offset, rng.choice([1, 4096, 65536, rng.randint(1, 4 * MiB)]))
            data = pread_exact(fd, length, offset)
            first, stop = offset // CHUNK, (offset + length - 1) // CHUNK + 1
            region = pread_exact(fd, min(file.size, stop * CHUNK) - first * CHUNK, first * CHUNK)
            reads += 2
            for index in range(first, stop):
                piece = memoryview(region)[(index - first) * CHUNK:(index - first + 1) * CHUNK]
                if hashlib.sha256(piece).hexdigest() != file.chunks[index]:
                    raise AssertionError(f"chunk {index} is wrong (read at {index * CHUNK})")
            if data != region[offset - first * CHUNK:offset - first * CHUNK + length]:
                raise AssertionError(f"range {offset}+{length} differs from its verified chunks")
            verified += len(region)
        return reads, verified


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            raise AssertionError(f"end of file at {offset}, {length} bytes early")
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return b"".join(parts)


@pytest.mark.slow
def test_sustained_load_loses_nothing(loaded, record_property):
    mount, files, cache = loaded
    total = sum(file.size for file in files)
    assert 1.0 * (1 << 30) <= total <= 1.5 * (1 << 30) and len(files) == 200
    assert {file.kind for file in files} == set(EXTENSIONS)
    daemon = psutil.Process(mount.process.pid)
    before = mount.stats()
    load = Load(files, LOAD_SECONDS)
    samples: list[tuple[float, int, int, int]] = []   # (time, rss, cache bytes kept, tmp bytes)
    seen_in_cache: set[str] = set()
    sampling = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not sampling.is_set():
            kept, _, temporary = cache_usage(cache)
            samples.append((time.monotonic() - start, daemon.memory_info().rss, kept, temporary))
            seen_in_cache.update(str(path) for path in (cache / "objects").glob("*/*"))
            sampling.wait(0.5)

    monitor = threading.Thread(target=sample, name="monitor", daemon=True)
    monitor.start()
    readers = [threading.Thread(target=load.run, args=(seed,), name=f"reader-{seed}") for seed in range(READERS)]
    started = time.monotonic()
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(LOAD_SECONDS + 300)
    elapsed = time.monotonic() - started
    sampling.set()
    monitor.join(30)
    after = mount.stats()
    if os.environ.get("DJFS_LOAD_TRACE"):  # for investigating: the samples as JSON lines
        with open(os.environ["DJFS_LOAD_TRACE"], "w") as trace:
            for sample_ in samples:
                trace.write(json.dumps(dict(zip(("t", "rss", "cache", "tmp"), sample_))) + "\n")
    assert not any(reader.is_alive() for reader in readers), "a reader hangs"
    assert mount.alive
    kept, cached_files, temporary = settled_usage(cache)
    evicted = {path for path in seen_in_cache if not Path(path).exists()}
    peak_rss = max(rss for _, rss, _, _ in samples)
    peak_cache = max(kept for _, _, kept, _ in samples)
    settled = [rss for t, rss, _, _ in samples if t > 0.25 * elapsed]
    third = max(1, len(settled) // 3)
    middle, last = settled[third:2 * third] or settled, settled[-third:]
    store_bytes = after.get("store_bytes", 0) - before.get("store_bytes", 0)

    record_property("load_seconds", round(elapsed, 1))
    record_property("load_readers", READERS)
    record_property("load_files", len(files))
    record_property("load_data_mib", total // MiB)
    record_property("load_operations", load.operations)
    record_property("load_reads", load.reads)
    record_property("load_bytes_verified", load.verified)
    record_property("load_errors", len(load.errors))
    record_property("load_peak_rss_mib", peak_rss // MiB)
    record_property("load_rss_middle_last_mib", f"{max(middle) // MiB}/{max(last) // MiB}")
    record_property("load_cache_peak_mib", peak_cache // MiB)
    record_property("load_cache_limit_mib", CACHE_LIMIT // MiB)
    record_property("load_cache_evicted_objects", len(evicted))
    record_property("load_store_mib", store_bytes // MiB)
    record_property("load_kinds", json.dumps(load.by_kind, sort_keys=True))
    record_property("load_daemon_counters", json.dumps({key: after.get(key, 0) - before.get(key, 0) for key in (
        "opens", "opens_cached", "opens_blocks", "whole_downloads", "parts", "blocks_fetched",
        "blocks_fetched_again", "store_requests", "part_retries", "objects_verified")}, sort_keys=True))

    assert not load.errors, load.errors[:5]
    assert load.operations >= 5 * READERS and load.verified >= total // 2, (load.operations, load.verified)
    assert {kind.split()[0] for kind in load.by_kind} == set(EXTENSIONS), load.by_kind
    assert after.get("opens_blocks", 0) > before.get("opens_blocks", 0)      # block reads were exercised ...
    assert after.get("parts", 0) > before.get("parts", 0)                    # ... and read-ahead parts
    # the cache holds its bound: at rest exactly, under load up to the objects being added at that moment
    assert kept <= CACHE_LIMIT, f"{kept / MiB:.0f} MiB cached at rest, limit {CACHE_LIMIT / MiB:.0f} MiB"
    assert peak_cache <= CACHE_LIMIT + 2 * WHOLE_MAX, f"peak {peak_cache / MiB:.0f} MiB"
    assert temporary <= READERS * WHOLE_MAX
    assert evicted and store_bytes > CACHE_LIMIT, "eviction was not exercised"
    # memory: bounded, and flat once warm (its caches are bounded: no growth from one third to the next)
    assert peak_rss < RSS_LIMIT, f"daemon RSS peaked at {peak_rss / MiB:.0f} MiB"
    assert max(last) <= max(middle) * 1.15 + 64 * MiB, \
        f"daemon RSS grows: {max(middle) / MiB:.0f} MiB, then {max(last) / MiB:.0f} MiB"

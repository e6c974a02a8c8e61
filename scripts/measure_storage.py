#!/usr/bin/env python3
"""Figures of the storage layer (verified reads, the checked cache, the mount's reader), as ratios against the
physical limit measured in the same run; medians of several repetitions (the machines are shared and noisy).

1. 10 x 8 MiB arrays on a file store, ``fetch`` of all of them: hash-verified (the default), size-checked only,
   with an empty cache (cold: filled in the background), with the cache filled (warm) — each against a raw read
   of the same stored files into new buffers.  Goals: verified >= 0.8x, cold cache >= 0.8x of no cache.
2. The mount's reader on one object in a local moto server: a cold sequential read (parallel parts), the CPU
   the reading process spends per GiB, against boto3's single GET of the same object in the same process;
   re-read with a new reader on the same disk cache (a remount): requests and time; 8 concurrent readers of 8
   objects: the process's RSS growth.

Usage: python scripts/measure_storage.py [--repeat N] [--size-mib N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

import djfs
from djfs import hashing
from djfs.cache import ObjectCache
from djfs.fs.reader import Reader, Stats, StoredObject, join
from djfs.stores import clear_store_cache
from djfs.testing.mariadb import MariaDBServer
from djfs.testing.s3 import REGION, MotoServer

MiB = 1 << 20


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_read(paths: list[Path]) -> list[bytearray]:
    buffers = []
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            buffer = bytearray(os.fstat(file.fileno()).st_size)
            file.readinto(buffer)
            buffers.append(buffer)
    return buffers


def bench_fetch(root: Path, connection, repeat: int) -> dict[str, float]:
    arrays = [np.random.default_rng(i).random(2 * MiB, dtype=np.float32) for i in range(10)]  # 8 MiB each
    (root / "store").mkdir()
    djfs.config["external-location"] = f"file://{root / 'store'}"
    name = f"measure_{uuid.uuid4().hex[:6]}"
    schema = djfs.Schema(name, connection=connection)
    schema.set_external_storage("lab")

    class Movie(djfs.Manual):
        definition = "movie_id : int\n---\nframes : external"
    schema(Movie, context={})
    Movie.insert([{"movie_id": i, "frames": a} for i, a in enumerate(arrays)])
    paths = sorted((root / "store" / "lab").rglob("*"))
    paths = [path for path in paths if path.is_file()]
    times: dict[str, list[float]] = {k: [] for k in ("raw", "hash", "size", "cold", "warm")}

    def fetch() -> None:
        got = Movie.fetch("frames", order_by="movie_id")
        assert all(np.array_equal(a, b) for a, b in zip(arrays, got))
    for r in range(repeat):
        times["raw"].append(timed(lambda: raw_read(paths)))
        with djfs.config.override(**{"verify-reads": "hash", "cache-location": None}):
            times["hash"].append(timed(fetch))
        with djfs.config.override(**{"verify-reads": "size", "cache-location": None}):
            times["size"].append(timed(fetch))
        with djfs.config.override(**{"cache-location": str(root / f"cache{r}")}):
            cache = schema.external.cache()
            times["cold"].append(timed(fetch))
            cache.flush()
            times["warm"].append(timed(fetch))
            cache.clear()
    schema.drop(force=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    total = sum(a.nbytes for a in arrays)
    return {"raw read MB/s": total / median["raw"] / 1e6,
            "fetch verified / raw read": median["raw"] / median["hash"],
            "fetch size-checked / raw read": median["raw"] / median["size"],
            "fetch cold cache / raw read": median["raw"] / median["cold"],
            "fetch cold cache / fetch without cache": median["hash"] / median["cold"],
            "fetch warm cache / raw read": median["raw"] / median["warm"]}


def bench_reader(server: MotoServer, root: Path, size: int, repeat: int) -> dict[str, float]:
    import boto3
    account, token = server.credentials
    bucket = server.create_bucket(f"measure-{uuid.uuid4().hex[:8]}")
    store = server.store(bucket, timeout=60.0)
    data = np.random.default_rng(1).bytes(size)
    oid = hashing.object_id(hashing.object_hash(data, b"o"), b"o")
    key = hashing.object_path(oid.key)
    store.put(key, data)
    client = boto3.session.Session().client("s3", endpoint_url=server.endpoint, region_name=REGION,
                                            aws_access_key_id=account, aws_secret_access_key=token)
    client.get_object(Bucket=bucket, Key=key)["Body"].read()  # warm the server
    result: dict[str, list[float]] = {k: [] for k in ("get", "get_cpu", "cold", "cold_cpu", "again", "requests")}
    for r in range(repeat):
        start, used = time.perf_counter(), cpu()
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        result["get"].append(time.perf_counter() - start)
        result["get_cpu"].append(cpu() - used)
        assert body == data
        del body
        cache = ObjectCache(root / f"reader-cache{r}", 4 << 30)
        obj = StoredObject(oid, size, store, key)
        for label in ("cold", "again"):
            reader = Reader(cache, whole_max=0, stats=Stats())
            handle = reader.open_stored(obj, b"", 0, size)
            start, used = time.perf_counter(), cpu()
            position, pieces = 0, []
            while position < size:
                piece = join(handle.pieces(position, MiB))
                pieces.append(piece)
                position += len(piece)
            result[label].append(time.perf_counter() - start)
            if label == "cold":
                result["cold_cpu"].append(cpu() - used)
            digest = hashlib_sha256(b"".join(pieces))
            del pieces
            handle.close()
            reader.close()
            if label == "again":
                result["requests"].append(reader.stats.snapshot().get("store_requests", 0))
            assert digest.digest() == hashlib_sha256(data).digest()
        cache.clear()
    median = {k: statistics.median(v) for k, v in result.items()}
    gib = size / (1 << 30)
    return {"object MiB": size / MiB,
            "single GET MB/s": size / median["get"] / 1e6,
            "reader cold MB/s": size / median["cold"] / 1e6,
            "reader cold / single GET": median["get"] / median["cold"],
            "CPU s per GiB, reader cold (this process)": median["cold_cpu"] / gib,
            "CPU s per GiB, boto3 single GET": median["get_cpu"] / gib,
            "re-read with a new reader, same cache / cold": median["again"] / median["cold"],
            "re-read store requests": median["requests"]}


def bench_concurrent(server: MotoServer, root: Path, size: int) -> dict[str, float]:
    import psutil
    bucket = server.create_bucket(f"measure-{uuid.uuid4().hex[:8]}")
    store = server.store(bucket, timeout=60.0)
    objects = []
    for i in range(8):
        data = np.random.default_rng(i).bytes(size)
        oid = hashing.object_id(hashing.object_hash(data, b"o"), b"o")
        store.put(hashing.object_path(oid.key), data)
        objects.append(StoredObject(oid, size, store, hashing.object_path(oid.key)))
        del data
    process = psutil.Process()
    base = process.memory_info().rss
    reader = Reader(ObjectCache(root / "concurrent-cache", 4 << 30), whole_max=0, stats=Stats())
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.05)

    def read(obj: StoredObject) -> None:
        handle = reader.open_stored(obj, b"", 0, obj.size)
        position = 0
        while position < obj.size:
            position += len(join(handle.pieces(position, MiB)))
        handle.close()
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=read, args=(obj,)) for obj in objects]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    reader.close()
    return {"8 streams x MiB": size / MiB, "8 streams MB/s": 8 * size / elapsed / 1e6,
            "RSS growth MiB": (peak[0] - base) / MiB}


def hashlib_sha256(data: bytes = b""):
    import hashlib
    return hashlib.sha256(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--skip-fetch", action="store_true", help="only the reader's figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="djfs-measure-") as directory:
        root = Path(directory)
        djfs.config["progress"] = False
        with MariaDBServer(root / "db") as mariadb, MotoServer() as server:
            connection = djfs.Connection(mariadb.host, mariadb.port, mariadb.user, mariadb.password)
            clear_store_cache()
            for name, value in ({} if args.skip_fetch else bench_fetch(root, connection, args.repeat)).items():
                print(f"file store  {name:45s} {value:10.2f}")
            for name, value in bench_reader(server, root, args.size_mib * MiB, args.repeat).items():
                print(f"reader      {name:45s} {value:10.2f}")
            for name, value in bench_concurrent(server, root, 64 * MiB).items():
                print(f"concurrent  {name:45s} {value:10.2f}")


if __name__ == "__main__":
    main()

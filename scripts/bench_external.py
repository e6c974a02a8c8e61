#!/usr/bin/env python3
"""Benchmark of external storage, as ratios against the physical limit measured in the same run.

1. 20 x 8 MiB float32 arrays through the file store: insert vs raw write+fsync of the same bytes (goal >= 0.4x);
   fetch vs a raw read of the same stored files: hash-verified (the default; goal >= 0.8x), ``verify-reads =
   size``, through an empty cache (cold; goal >= 0.8x of the fetch without a cache) and a filled one (warm).
2. 500 x 64 KiB arrays on S3 (a local s3rver server): one insert/fetch call with parallel transfers vs a
   one-at-a-time loop over the same store (goal: >= 4x), directly and through a relay that plays a remote S3
   (10 ms per request, ~90 MiB/s per connection); bare boto3 (8 threads vs serial) gives the ceiling of each.
3. Remote S3 (the same relay): ``fetch1`` of a 1 GiB external value vs boto3's ``download_fileobj`` with 8
   threads (s3transfer, the ceiling for one object; goal >= 0.8x) and vs one GET.

Starts its own MariaDB and S3 server (``--s3 moto`` for moto); medians of several repetitions (the machines are
shared and noisy).
Usage: python scripts/bench_external.py [--repeat N] [--fetch-size 1GiB]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
from benchlib import (REMOTE_DELAY, MiB, RemoteS3, Results, drop_page_cache, median, s3transfer_download, single_get,
                      start_s3, stop_s3, write_fsync)
from benchlib import timed as timed_result

import djfs
from djfs.stores import clear_store_cache
from djfs.testing.mariadb import MariaDBServer


def timed(function) -> float:
    return timed_result(function)[0]


def raw_write(directory: Path, arrays: list[np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(arrays):
        write_fsync(directory / f"{i}.raw", array)


def raw_read(paths: list[Path]) -> list[bytearray]:
    """Read every file into its own new buffer, all kept alive, as a fetch of 20 arrays must."""
    buffers = []
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            buffer = bytearray(os.fstat(file.fileno()).st_size)
            file.readinto(buffer)
            buffers.append(buffer)
    return buffers


def declare(name: str, connection) -> type:
    schema = djfs.Schema(name, connection=connection)
    schema.set_external_storage(name.replace("_", "-"))

    class Movie(djfs.Manual):
        definition = """
        movie_id : int
        ---
        frames : external
        """
    schema(Movie, context={})
    return schema, Movie


def bench_file_store(root: Path, connection, repeat: int, results: Results) -> dict[str, float]:
    """Insert and fetch of 20 x 8 MiB arrays on a file store against a raw write+fsync / raw read of the same
    bytes; the fetch hash-verified (the default), size-checked only (``verify-reads = size``), through an empty
    cache (cold: filled in the background) and through the filled cache (warm), each against the raw read of the
    same stored files in the same repetition (issue 12)."""
    arrays = [np.random.default_rng(i).random(2 * MiB, dtype=np.float32) for i in range(20)]  # 8 MiB each
    total = sum(a.nbytes for a in arrays)
    (root / "store").mkdir()
    djfs.config["external-location"] = f"file://{root / 'store'}"
    times: dict[str, list[float]] = {k: [] for k in ("raw write", "insert", "raw read", "hash", "size", "cold",
                                                     "warm")}
    for r in range(repeat):
        raw_dir = root / f"raw{r}"
        times["raw write"].append(timed(lambda: raw_write(raw_dir, arrays)))
        schema, Movie = declare(f"bench_file_{r}_{uuid.uuid4().hex[:6]}", connection)
        rows = [{"movie_id": i, "frames": a} for i, a in enumerate(arrays)]
        times["insert"].append(timed(lambda: Movie.insert(rows)))
        stored = [path for path in sorted((root / "store").rglob("*")) if path.is_file()
                  and schema.database.replace("_", "-") in path.parts]
        assert len(stored) == len(arrays), stored

        def fetch(label: str) -> None:
            """Time one fetch of all arrays (checked afterwards, outside the timing)."""
            seconds, got = timed_result(lambda: Movie.fetch("frames", order_by="movie_id"))
            assert all(np.array_equal(a, b) for a, b in zip(arrays, got))
            times[label].append(seconds)
        times["raw read"].append(timed(lambda: raw_read(stored)))
        with djfs.config.override(**{"verify-reads": "hash", "cache-location": None}):
            fetch("hash")
        with djfs.config.override(**{"verify-reads": "size", "cache-location": None}):
            fetch("size")
        with djfs.config.override(**{"cache-location": str(root / f"cache{r}")}):
            cache = schema.external.cache()
            fetch("cold")
            cache.flush()
            fetch("warm")
            cache.clear()
        schema.drop(force=True)
    m = {k: median(v) for k, v in times.items()}
    rate = {k: f"{total / m[k] / 1e6:.0f} MB/s" for k in m}
    results.at_least("file store insert vs raw write+fsync", m["raw write"] / m["insert"], 0.4,
                     f"insert {rate['insert']}, raw write+fsync {rate['raw write']}")
    results.at_least("file store fetch (hash-verified) vs raw read", m["raw read"] / m["hash"], 0.8,
                     f"fetch {rate['hash']}, raw read {rate['raw read']}")
    results.at_least("file store fetch, verify-reads=size vs raw read", m["raw read"] / m["size"], None,
                     f"fetch {rate['size']}")
    results.at_least("file store fetch, cold cache vs raw read", m["raw read"] / m["cold"], None,
                     f"fetch {rate['cold']}")
    results.at_least("file store fetch, cold cache vs no cache", m["hash"] / m["cold"], 0.8,
                     "the cache is filled after the caller has its values")
    results.at_least("file store fetch, warm cache vs raw read", m["raw read"] / m["warm"], None,
                     f"fetch {rate['warm']} (every cache block checked)")


def bench_s3_parallel(server, connection, repeat: int, port: int | None = None) -> dict[str, float]:
    """``port``: talk to the server through that port (a latency relay) instead of directly."""
    arrays = [np.random.default_rng(i).random(8192) for i in range(500)]  # 64 KiB each
    port = port or server.port
    djfs.config["external-location"] = f"s3+http://127.0.0.1:{port}/bench"
    djfs.config["external-account"], djfs.config["external-token"] = server.credentials
    clear_store_cache()
    loop_in, loop_out, par_in, par_out = [], [], [], []
    for r in range(repeat):
        name = f"bench_s3_{r}_{uuid.uuid4().hex[:6]}"
        server.create_bucket(name.replace("_", "-"))
        schema, Movie = declare(name, connection)
        rows = [{"movie_id": i, "frames": a} for i, a in enumerate(arrays)]
        loop_in.append(timed(lambda: [Movie.insert1(row) for row in rows]))
        loop_out.append(timed(lambda: [(Movie & {"movie_id": i}).fetch1("frames") for i in range(len(rows))]))
        Movie.delete(safemode=False)
        schema.external.gc()
        name2 = name + "p"
        server.create_bucket(name2.replace("_", "-"))
        schema2, Movie2 = declare(name2, connection)
        par_in.append(timed(lambda: Movie2.insert(rows)))
        got = []
        par_out.append(timed(lambda: got.append(Movie2.fetch("frames", order_by="movie_id"))))
        assert all(np.array_equal(a, b) for a, b in zip(arrays, got[0]))
        schema.drop(force=True)
        schema2.drop(force=True)
    # the ceiling on this machine: the same puts and gets with bare boto3, one at a time vs 8 threads
    import boto3
    from botocore.config import Config
    account, token = server.credentials
    client = boto3.session.Session().client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                                            aws_access_key_id=account, aws_secret_access_key=token,
                                            config=Config(max_pool_connections=16))
    bucket = server.create_bucket(f"bench-raw-{uuid.uuid4().hex[:8]}")
    payloads = [a.tobytes() for a in arrays]
    from concurrent.futures import ThreadPoolExecutor
    raw_serial = timed(lambda: [client.put_object(Bucket=bucket, Key=str(i), Body=p) for i, p in enumerate(payloads)]
                       + [client.get_object(Bucket=bucket, Key=str(i))["Body"].read() for i in range(len(payloads))])
    with ThreadPoolExecutor(8) as pool:
        raw_parallel = timed(lambda: list(pool.map(lambda i: client.put_object(
            Bucket=bucket, Key=str(i), Body=payloads[i]), range(len(payloads)))) + list(pool.map(
            lambda i: client.get_object(Bucket=bucket, Key=str(i))["Body"].read(), range(len(payloads)))))
    return {"raw boto3 8 threads / serial": raw_serial / raw_parallel,
            "loop insert s": median(loop_in), "parallel insert s": median(par_in),
            "loop fetch s": median(loop_out), "parallel fetch s": median(par_out),
            "insert speed-up": median(loop_in) / median(par_in),
            "fetch speed-up": median(loop_out) / median(par_out)}


def bench_remote_fetch(server, connection, repeat: int, size: int, results: Results, delay: float) -> None:
    """``fetch1`` of one large value from a remote S3 (the relay) vs s3transfer and one GET of its object."""
    name = f"bench_big_{uuid.uuid4().hex[:6]}"
    server.create_bucket(name.replace("_", "-"))
    djfs.config["external-location"] = server.location("bench")
    djfs.config["external-account"], djfs.config["external-token"] = server.credentials
    clear_store_cache()
    schema, Movie = declare(name, connection)
    value = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    print(f"storing a {size / MiB:.0f} MiB value ...", flush=True)
    Movie.insert1({"movie_id": 1, "frames": value})
    object_hash = connection.query(f"SELECT hash FROM `{name}`.`~external`").fetchone()[0]
    key = f"bench/{object_hash[:2]}/{object_hash[2:4]}/{object_hash}"
    bucket = name.replace("_", "-")
    remote = RemoteS3(server, delay=delay)
    client = remote.client()
    fetches, s3t, gets = [], [], []
    try:
        djfs.config["external-location"] = remote.location("bench")
        clear_store_cache()
        for _ in range(max(1, repeat)):
            drop_page_cache()
            seconds, fetched = timed_result(lambda: Movie.fetch1("frames"))
            assert fetched.nbytes == value.nbytes
            del fetched
            fetches.append(seconds)
            s3t.append(s3transfer_download(client, bucket, key)[0])
            gets.append(single_get(client, bucket, key)[0])
    finally:
        remote.close()
        schema.drop(force=True)
    fetch, ceiling, one = median(fetches), median(s3t), median(gets)
    mib = size / MiB
    results.at_least(f"remote fetch1 of {mib:.0f} MiB: djfs vs s3transfer 8 threads", ceiling / fetch, 0.8,
                     f"fetch1 {mib / fetch:.0f} MiB/s, s3transfer {mib / ceiling:.0f} MiB/s ({remote.describe()})")
    results.at_least(f"remote fetch1 of {mib:.0f} MiB: djfs vs one GET", one / fetch, None,
                     f"one GET {mib / one:.0f} MiB/s")


def bench_many_small(s3, connection, args: argparse.Namespace) -> None:
    """Section 2: many small values, directly and through the relay."""
    print(f"## S3 ({args.s3}), 500 x 64 KiB arrays: one call vs one-at-a-time loop")
    for key, value in bench_s3_parallel(s3, connection, max(1, args.repeat // 2)).items():
        print(f"{key:>28}: {value:10.2f}")
    remote = RemoteS3(s3, delay=args.latency)
    print(f"## the same through a relay playing a remote S3: {remote.describe()}")
    try:
        for key, value in bench_s3_parallel(s3, connection, max(1, args.repeat // 2), remote.relay.port).items():
            print(f"{key:>28}: {value:10.2f}")
    finally:
        remote.close()


def main() -> None:
    from djfs.settings import parse_size
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=float, default=REMOTE_DELAY, help="seconds per request added by the relay")
    parser.add_argument("--s3", default="s3rver", choices=["s3rver", "moto"], help="the S3 server (default s3rver)")
    parser.add_argument("--fetch-size", default="1GiB", help="size of the remote fetch1 value (0: skip it)")
    parser.add_argument("--sections", default="file,s3,remote",
                        help="which to run: file (file store), s3 (many small values), remote (one large value)")
    args = parser.parse_args()
    sections = {name.strip() for name in args.sections.split(",") if name.strip()}
    if not sections <= {"file", "s3", "remote"}:
        parser.error(f"unknown sections: {', '.join(sorted(sections - {'file', 's3', 'remote'}))}")
    djfs.config["progress"] = False
    with tempfile.TemporaryDirectory(prefix="djfs-bench-", dir=os.environ.get("BENCH_DIR")) as tmp, \
            MariaDBServer(Path(tmp) / "db") as db:
        s3 = start_s3(args.s3)
        try:
            connection = djfs.Connection(db.host, db.port, db.user, db.password)
            print(f"# external storage benchmark, medians of {args.repeat} runs")
            if "file" in sections:
                results = Results()
                bench_file_store(Path(tmp), connection, args.repeat, results)
                results.print("## file store, 20 x 8 MiB float32 arrays")
            if "s3" in sections:
                bench_many_small(s3, connection, args)
            size = parse_size(args.fetch_size)
            if size and "remote" in sections:
                results = Results()
                bench_remote_fetch(s3, connection, max(1, args.repeat // 2), size, results, args.latency)
                results.print(f"## remote S3, one large value, medians of {max(1, args.repeat // 2)}")
        finally:
            stop_s3(s3)


if __name__ == "__main__":
    main()

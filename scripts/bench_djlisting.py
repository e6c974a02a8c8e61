#!/usr/bin/env python3
"""Cost of listing a DataJoint 0.14 table through the mount (not a test): store requests and time, cold and warm.

Starts its own MariaDB and S3 server (``benchlib.Lab``; s3rver by default), seen through ``benchlib.RemoteS3`` as a
remote S3 (10 ms per request by default).  The real ``datajoint`` 0.14 creates a table of ``--rows`` rows
(default 1,000), one ``blob@`` value each on the S3 store (half compressible, so DataJoint compresses them).  Then
``ls -l`` of every row directory (``os.scandir`` + ``stat`` of every file) through a fresh mount:

1. cold: the blobs' views are learned from their heads (one ranged read per object, in parallel);
2. warm, same mount, after the listing timeout;
3. warm per host: a new mount sharing the cache (the heads are in the cache);

each against the physical limit measured in the same run: the same ranged reads of every object's first KiB with
boto3 from 16 threads.

Run as root (or with FUSE available):  python scripts/bench_djlisting.py [--rows 1000] [--delay 0.01]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import benchlib


def list_table(mountpoint: str, schema: str) -> tuple[float, int]:
    """``ls -l`` of every row directory: seconds and the number of files seen."""
    def walk() -> int:
        count = 0
        with os.scandir(os.path.join(mountpoint, schema, "Scan")) as rows:
            for row in rows:
                with os.scandir(row.path) as files:
                    for file in files:
                        file.stat()
                        count += 1
        return count
    return benchlib.timed(walk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=benchlib.REMOTE_DELAY,
                        help="seconds added per S3 request (default %(default)s)")
    parser.add_argument("--s3", default="s3rver", choices=["s3rver", "moto"], help="the local S3 server")
    parser.add_argument("--root", help="working directory (default: a temporary one)")
    args = parser.parse_args()

    import datajoint as dj

    root = Path(args.root or tempfile.mkdtemp(prefix="djfs-bench-djlisting-"))
    lab = benchlib.Lab(root, s3=args.s3).start()
    remote = benchlib.RemoteS3(lab.s3, delay=args.delay)
    mounts = []
    try:
        bucket = lab.s3.create_bucket(f"bench-{uuid.uuid4().hex[:12]}")
        account, secret = lab.s3.credentials
        store = {"protocol": "s3", "endpoint": f"127.0.0.1:{lab.s3.port}", "bucket": bucket, "access_key": account,
                 "secret_key": secret, "location": "dj/lab"}
        dj.config.update({"database.host": lab.db.host, "database.port": lab.db.port, "database.user": lab.db.user,
                          "database.password": lab.db.password or "", "database.use_tls": False, "safemode": False,
                          "loglevel": "WARNING"})
        dj.config["stores"] = {"shared": dict(store)}
        schema = dj.Schema("bench_dj")

        @schema
        class Scan(dj.Manual):
            definition = """
            scan : int
            ---
            frames : blob@shared
            """
        rng = np.random.default_rng(0)
        print(f"DataJoint 0.14 inserts {args.rows} rows with a blob@shared value each ...", flush=True)
        Scan.insert([{"scan": i, "frames": rng.random((32, 32)) if i % 2 else np.full((64, 64), i, np.int16)}
                     for i in range(args.rows)])

        # the mount's configuration: the same store, reached through the relay (a remote S3)
        lab.settings["stores"] = {"shared": {**store, "endpoint": f"127.0.0.1:{remote.relay.port}"}}
        options = ["schemas=bench_dj", "listing_timeout=0.5", "attr_timeout=0.5", "entry_timeout=0.5"]

        def mount() -> str:
            mounts.append(lab.mount(options))
            return mounts[-1][0]

        # the physical limit: the same ranged reads with boto3, 16 at a time, through the same relay
        keys = [f"dj/lab/bench_dj/{h[:2]}/{h[2:4]}/{h}" for h in
                (bytes(row[0]).hex() for row in dj.conn().query("SELECT hash FROM `bench_dj`.`~external_shared`"))]
        client = remote.client(connections=16)
        with ThreadPoolExecutor(16) as pool:
            limit, _ = benchlib.timed(lambda: list(pool.map(
                lambda key: client.get_object(Bucket=bucket, Key=key, Range="bytes=0-1023")["Body"].read(), keys)))

        mountpoint = mount()
        cold, files = list_table(mountpoint, "bench_dj")
        after_cold = benchlib.mount_stats(mountpoint)
        time.sleep(1.0)  # past the listing timeout: the rows are listed again
        warm, _ = list_table(mountpoint, "bench_dj")
        after_warm = benchlib.mount_stats(mountpoint)
        benchlib.unmount(*mounts.pop())
        mountpoint = mount()
        benchlib.timed(lambda: os.listdir(os.path.join(mountpoint, "bench_dj")))  # the daemon's first queries
        host, _ = list_table(mountpoint, "bench_dj")
        after_host = benchlib.mount_stats(mountpoint)

        requests = lambda s: s.get("store_requests", 0)  # noqa: E731
        print(f"\nls -l of {args.rows} rows ({files} files), blob@ on S3 ({remote.describe()}):")
        print(f"  physical limit: {len(keys)} ranged reads of 1 KiB, boto3, 16 threads: {limit:.2f} s")
        print(f"  cold:            {cold:6.2f} s, {requests(after_cold):5d} store requests "
              f"({after_cold.get('datajoint_head_reads', 0)} head reads), {after_cold.get('sql_queries', 0)} SQL "
              f"queries; {cold / limit:.2f}x the limit")
        print(f"  warm (same mount): {warm:4.2f} s, {requests(after_warm) - requests(after_cold):5d} store requests")
        print(f"  warm (new mount, same host cache): {host:.2f} s, {requests(after_host):d} store requests")
        return 0
    finally:
        for mounted in mounts:
            benchlib.unmount(*mounted)
        remote.close()
        lab.close()


if __name__ == "__main__":
    sys.exit(main())

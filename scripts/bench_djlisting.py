#!/usr/bin/env python3
"""Cost of listing a DataJoint 0.14 table through the mount (not a test): store requests and time, cold and warm.

Starts its own MariaDB and moto S3 server, and a relay in front of S3 that adds a round trip of ``--delay``
seconds per request (a remote S3; default 10 ms).  The real ``datajoint`` 0.14 creates a table of ``--rows`` rows
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
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mount import unmount, wait_mounted  # noqa: E402


def list_table(mountpoint: str, schema: str) -> tuple[float, int]:
    """``ls -l`` of every row directory: seconds and the number of files seen."""
    start = time.perf_counter()
    count = 0
    table = os.path.join(mountpoint, schema, "Scan")
    with os.scandir(table) as rows:
        for row in rows:
            with os.scandir(row.path) as files:
                for file in files:
                    file.stat()
                    count += 1
    return time.perf_counter() - start, count


def stats(mountpoint: str) -> dict:
    return json.loads(os.getxattr(mountpoint, "user.djfs.stats"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.01, help="seconds added per S3 request (default 0.01)")
    parser.add_argument("--root", help="working directory (default: a temporary one)")
    args = parser.parse_args()

    import datajoint as dj

    from djfs.testing.mariadb import MariaDBServer
    from djfs.testing.relay import Relay
    from djfs.testing.s3 import MotoServer

    root = Path(args.root or tempfile.mkdtemp(prefix="djfs-bench-djlisting-"))
    print(f"starting MariaDB and the moto S3 server in {root} ...", flush=True)
    db = MariaDBServer(root / "mariadb").start()
    s3 = MotoServer().start()
    relay = Relay(s3.port, delay=args.delay)
    processes = []
    try:
        bucket = s3.create_bucket(f"bench-{uuid.uuid4().hex[:12]}")
        account, secret = s3.credentials
        store = {"protocol": "s3", "endpoint": f"{s3.host}:{s3.port}", "bucket": bucket, "access_key": account,
                 "secret_key": secret, "location": "dj/lab"}
        dj.config.update({"database.host": db.host, "database.port": db.port, "database.user": db.user,
                          "database.password": db.password or "", "database.use_tls": False, "safemode": False,
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
        config = {"stores": {"shared": {**store, "endpoint": f"127.0.0.1:{relay.port}"}},
                  "cache-location": str(root / "cache")}
        config_file = root / "config.json"
        config_file.write_text(json.dumps(config))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DJ_", "AWS_"))}
        env.update(DJ_HOST=db.host, DJ_PORT=str(db.port), DJ_USER=db.user, DJ_PASS=db.password or "",
                   DJ_CONFIG=str(config_file))

        def mount() -> tuple[str, subprocess.Popen]:
            mountpoint = tempfile.mkdtemp(prefix="mnt-", dir=root)
            process = subprocess.Popen([sys.executable, "-m", "djfs.cli", "mount", "-f", mountpoint, "-o",
                                        "schemas=bench_dj,listing_timeout=0.5,attr_timeout=0.5,entry_timeout=0.5",
                                        "--log-file", str(root / "daemon.log")], env=env)
            processes.append((mountpoint, process))
            wait_mounted(mountpoint, process)
            return mountpoint, process

        # the physical limit: the same ranged reads with boto3, 16 at a time, through the same relay
        keys = [f"dj/lab/bench_dj/{h[:2]}/{h[2:4]}/{h}" for h in
                (bytes(row[0]).hex() for row in dj.conn().query("SELECT hash FROM `bench_dj`.`~external_shared`"))]
        client = s3.client()
        client._endpoint.host = f"http://127.0.0.1:{relay.port}"
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda key: client.get_object(Bucket=bucket, Key=key, Range="bytes=0-1023")["Body"].read(),
                          keys))
        limit = time.perf_counter() - start

        mountpoint, process = mount()
        cold, files = list_table(mountpoint, "bench_dj")
        after_cold = stats(mountpoint)
        time.sleep(1.0)  # past the listing timeout: the rows are listed again
        warm, _ = list_table(mountpoint, "bench_dj")
        after_warm = stats(mountpoint)
        unmount(mountpoint, process)
        mountpoint, process = mount()
        host, _ = list_table(mountpoint, "bench_dj")
        after_host = stats(mountpoint)
        unmount(mountpoint, process)

        requests = lambda s: s.get("store_requests", 0)  # noqa: E731
        print(f"\nls -l of {args.rows} rows ({files} files), blob@ on S3 with {args.delay * 1000:.0f} ms per request:")
        print(f"  physical limit: {len(keys)} ranged reads of 1 KiB, boto3, 16 threads: {limit:.2f} s")
        print(f"  cold:            {cold:6.2f} s, {requests(after_cold):5d} store requests "
              f"({after_cold.get('datajoint_head_reads', 0)} head reads), {after_cold.get('sql_queries', 0)} SQL "
              f"queries; {cold / limit:.2f}x the limit")
        print(f"  warm (same mount): {warm:4.2f} s, {requests(after_warm) - requests(after_cold):5d} store requests")
        print(f"  warm (new mount, same host cache): {host:.2f} s, {requests(after_host):d} store requests")
        return 0
    finally:
        for mountpoint, process in processes:
            if process.poll() is None:
                unmount(mountpoint, process)
        relay.close()
        s3.stop()
        db.stop()


if __name__ == "__main__":
    sys.exit(main())

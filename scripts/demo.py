#!/usr/bin/env python3
"""The demo: a small two-photon pipeline in djfs, mounted read-only and read through numpy and tifffile.

Run through ``scripts/demo`` (which installs what is needed).  State lives in ``./.djfs-demo``:
the MariaDB data, the file store, the cache and the mount point.  ``--clean`` removes it first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import djfs
from djfs.testing.mariadb import MariaDBServer

HOME = Path(".djfs-demo").resolve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clean", action="store_true", help="start from scratch")
    parser.add_argument("--keep-mounted", action="store_true", help="leave the mount and database running")
    args = parser.parse_args()
    if args.clean and HOME.exists():
        subprocess.run([sys.executable, "-m", "djfs.cli", "umount", str(HOME / "mnt")], capture_output=True)
        MariaDBServer(HOME / "db").stop()
        shutil.rmtree(HOME)
    (HOME / "store").mkdir(parents=True, exist_ok=True)

    server = MariaDBServer(HOME / "db")
    if server.portfile.exists():
        server.port = int(server.portfile.read_text())
        server.stop()
    server.start()
    print(f"MariaDB (private, loopback) on port {server.port}, data in {server.datadir}")

    config = {"database.host": server.host, "database.port": server.port, "database.user": server.user,
              "database.password": server.password, "external-location": f"file://{HOME / 'store'}",
              "cache-location": str(HOME / "cache"), "cache-size": "2GiB"}
    config_file = HOME / "dj_local_conf.json"
    config_file.write_text(json.dumps(config, indent=2))
    for key, value in config.items():
        djfs.config[key] = value
    djfs.conn(reset=True)

    schema = djfs.Schema("demo_imaging")
    schema.set_external_storage("demo_imaging")

    @schema
    class Mouse(djfs.Manual):
        definition = """
        # experimental animals
        mouse_id : int
        ---
        genotype : varchar(32)
        dob = null : date
        """

    @schema
    class Scan(djfs.Manual):
        definition = """
        # a two-photon scan
        -> Mouse
        scan_idx : smallint
        ---
        depth : float          # microns
        fps : double           # frames per second
        """

    @schema
    class AlignedMovie(djfs.Imported):
        definition = """
        # motion-aligned movies (kept in the file store, not in MySQL)
        -> Scan
        ---
        movie : npy@           # frames x height x width, float32: a real .npy, frames contiguous (+ a .tif view)
        mean_image : longblob  # small: kept in MySQL
        """

        class Roi(djfs.Part):
            definition = """
            -> master
            roi_id : int
            ---
            trace : external
            mask : longblob
            """

    if AlignedMovie.heading["movie"].serialization != "npy":
        print("this demo's tables are from an older djfs (movie was `external`): run scripts/demo --clean")
        return 1
    rng = np.random.default_rng(0)
    Mouse.insert([{"mouse_id": 1, "genotype": "GCaMP6s", "dob": "2026-01-05"},
                  {"mouse_id": 2, "genotype": "GCaMP8m", "dob": None}], skip_duplicates=True)
    Scan.insert([{"mouse_id": m, "scan_idx": s, "depth": 150.0 + 50 * s, "fps": 30.0}
                 for m in (1, 2) for s in (1, 2)], skip_duplicates=True)
    for key in Scan.fetch("KEY"):
        if key in AlignedMovie:
            continue
        movie = rng.standard_normal((300, 256, 256), dtype=np.float32)  # 75 MiB
        AlignedMovie.insert1({**key, "movie": movie, "mean_image": movie.mean(axis=0)})
        AlignedMovie.Roi.insert([{**key, "roi_id": r, "trace": movie[:, r, r].copy(),
                                  "mask": np.eye(8, dtype=bool)} for r in range(3)])

    print("\nWhat the demo stored:")
    for table in (Mouse, Scan, AlignedMovie, AlignedMovie.Roi):
        print(f"  {table.full_table_name}: {len(table)} rows")
    entries = schema.connection.query("SELECT COUNT(*), SUM(size) FROM `demo_imaging`.`~external` "
                                      "WHERE status = 'stored'").fetchone()
    print(f"  ~external: {entries[0]} objects, {int(entries[1]) / 2**20:.1f} MiB in {HOME / 'store'}")
    movie = (AlignedMovie & {"mouse_id": 1, "scan_idx": 1}).fetch1("movie")
    print(f"  fetched movie of mouse 1, scan 1: shape {movie.shape}, dtype {movie.dtype}")

    mountpoint = HOME / "mnt"
    mountpoint.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "djfs.cli", "umount", str(mountpoint)], capture_output=True)
    env = {**os.environ, "DJ_CONFIG": str(config_file)}
    print(f"\n$ djfs mount {mountpoint}")
    subprocess.run([sys.executable, "-m", "djfs.cli", "mount", str(mountpoint)], env=env, check=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"$ ls -lR {mountpoint}/demo_imaging")
        listing = subprocess.run(["ls", "-lR", str(mountpoint / "demo_imaging")], capture_output=True, text=True,
                                 check=True).stdout
        print(listing)
        path = next((mountpoint / "demo_imaging" / "AlignedMovie" / "mouse_id=1" / "scan_idx=1").glob("movie*.npy"))
        mapped = np.load(path, mmap_mode="r")
        frames = np.array(mapped[100:110, 64:128, 64:128])
        del mapped  # closes the memory map, so the mount isn't busy when we unmount
        print(f">>> np.load('{path}', mmap_mode='r')[100:110, 64:128, 64:128]")
        print(f"shape {frames.shape}, mean {frames.mean():+.4f}; identical to fetch: "
              f"{np.array_equal(frames, movie[100:110, 64:128, 64:128])}")
        assert np.array_equal(frames, movie[100:110, 64:128, 64:128])
        show_tiff(path.with_suffix(".tif"), movie)
    finally:
        if not args.keep_mounted:
            subprocess.run([sys.executable, "-m", "djfs.cli", "umount", str(mountpoint)], check=True)
            server.stop()
            print("\nunmounted and stopped the database (run with --keep-mounted to explore)")
        else:
            print(f"\nmounted at {mountpoint}; database on port {server.port}; "
                  f"stop with: djfs umount {mountpoint}; scripts/dbserver stop")
    return 0


def show_tiff(path: Path, movie: np.ndarray) -> None:
    """The movie's TIFF view, as Fiji/ImageJ or any TIFF reader sees it: a stack, read frame by frame."""
    import tifffile

    print(f"\n$ ls -l {path.parent}")
    print(subprocess.run(["ls", "-l", str(path.parent)], capture_output=True, text=True, check=True).stdout)
    with tifffile.TiffFile(path) as tif:
        metadata = tif.imagej_metadata or {}
        print(f">>> tifffile.TiffFile('{path}')")
        print(f"ImageJ hyperstack: {tif.is_imagej}, frames={metadata.get('frames')}, series shape "
              f"{tif.series[0].shape}, dtype {tif.series[0].dtype}, {len(tif.pages)} pages (IFDs)")
        frames = tif.asarray(key=range(100, 110))
    print(f">>> tif.asarray(key=range(100, 110)): shape {frames.shape}, identical to fetch: "
          f"{np.array_equal(frames, movie[100:110])}")
    assert np.array_equal(frames, movie[100:110])
    print("(open the same file in Fiji: File > Import > TIFF Virtual Stack, or drag it in: a 300-frame stack)")


if __name__ == "__main__":
    sys.exit(main())

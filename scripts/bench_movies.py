#!/usr/bin/env python3
"""The movies benchmark of issue 11, kept under its old name: ``bench_mount.py --sections movies``.

Usage: python scripts/bench_movies.py [--size 1GiB] [--repeat 3] [--s3 s3rver|moto]
"""

import os
import sys

if __name__ == "__main__":
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_mount.py")
    os.execv(sys.executable, [sys.executable, script, "--sections", "movies", *sys.argv[1:]])

"""Test rig: a private MariaDB, an S3 endpoint (moto server) and FUSE mounts, all real and all local.

A test that needs one of them and can't have it fails; nothing is skipped for a missing component.
"""

from pathlib import Path

pytest_plugins = [name for name in ("fixtures_mariadb", "fixtures_s3", "fixtures_external", "fixtures_fuse",
                                     "fixtures_datajoint")
                  if (Path(__file__).parent / f"{name}.py").exists()]

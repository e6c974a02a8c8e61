"""Throwaway local servers (MariaDB, S3 endpoints: moto and s3rver), a network relay, and table fillers for the
tests, the demo and the benchmarks.

Not part of the library's layers: nothing in ``djfs`` imports this package.
"""

"""Throwaway local servers (MariaDB, an S3 endpoint) for the tests, the demo and the benchmarks.

Not part of the library's layers: nothing in ``djfs`` imports this package.
"""

"""External objects: how a value kept outside MySQL is staged, addressed (``~external`` and DataJoint's
``~external_<store>`` tables), read back verified, and collected.  Depends on storage (``djfs.stores``,
``djfs.cache``) and the primitives (``blob``, ``npy``, ``hashing``, ``settings``); the relational layer above it
calls it to encode and decode attribute values."""

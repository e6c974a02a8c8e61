"""The relational layer: headings, declarations, DataJoint's query algebra, fetch, tables and schemas.
Above the external objects (``djfs.objects``), which it calls to encode and decode values kept outside MySQL;
below the mount (``djfs.fs``)."""

"""The read-only FUSE view of djfs schemas: ``djfs mount MOUNTPOINT``.

Layout::

    /<schema>/<Table>/<pk1>=<v1>/<pk2>=<v2>/.../<attribute file>
                                               row.json

Layers, each depending only on the ones below it (and on the library: heading, external, cache, stores,
blob, connection):

``paths``       primary-key values <-> directory names (reversible percent-encoding)
``views``       how one stored value becomes one file (.npy range-mapped, .bin raw bytes, .blob, row.json)
``tree``        path -> (schema, table, key, file); all SQL of the view; paging by key; caches kept while a
                table's change probe says it is unchanged
``reader``      bytes of stored objects: cache files, blocks, streaming read-ahead, single flight
``operations``  thin mfusepy Operations over tree + reader; everything else is EROFS
``mount``       options, the daemon, mounting in the background, unmounting (also stale mounts)

Nothing below this package imports it; the mount never imports users' table classes.
"""

from .mount import MountError, MountOptions, is_mounted, mount, unmount

__all__ = ["MountError", "MountOptions", "is_mounted", "mount", "unmount"]

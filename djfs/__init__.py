"""djfs: DataJoint-style pipelines in MySQL with external storage, and a read-only FUSE view of them.

    import djfs
    schema = djfs.Schema('lab_imaging')

    @schema
    class Scan(djfs.Manual):
        definition = '''
        scan_id : int
        ---
        movie : external   # motion-aligned movie
        '''
"""

from .settings import Config, ConfigError, load_default

config: Config = load_default()

from . import blob, errors  # noqa: E402
from .condition import Not  # noqa: E402
from .connection import Connection, conn  # noqa: E402
from .errors import DjfsError  # noqa: E402
from .schema import Schema  # noqa: E402
from .user_tables import Computed, Imported, Lookup, Manual, Part  # noqa: E402

DataJointError = DjfsError

__all__ = ["config", "Config", "ConfigError", "conn", "Connection", "Schema", "Manual", "Lookup", "Imported",
           "Computed", "Part", "Not", "blob", "errors", "DjfsError", "DataJointError"]
__version__ = "0.1.0"

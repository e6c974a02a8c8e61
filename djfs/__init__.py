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

from .settings import Config, ConfigError, LazyConfig

config: Config = LazyConfig()  # read from dj_local_conf.json / $DJ_CONFIG / DJ_* on first use

from . import blob, errors  # noqa: E402
from .relational.condition import Not, Top  # noqa: E402
from .connection import Connection, conn  # noqa: E402
from .errors import DjfsError  # noqa: E402
from .relational.expression import QueryExpression, U  # noqa: E402
from .relational.schema import Schema, VirtualModule  # noqa: E402
from .relational.table import FreeTable  # noqa: E402
from .relational.user_tables import Computed, Imported, Lookup, Manual, Part  # noqa: E402

DataJointError = DjfsError
create_virtual_module = VirtualModule  # DataJoint's older name

__all__ = ["config", "Config", "ConfigError", "conn", "Connection", "Schema", "VirtualModule", "create_virtual_module",
           "Manual", "Lookup", "Imported", "Computed", "Part", "FreeTable", "QueryExpression", "U", "Not", "Top", "blob",
           "errors", "DjfsError", "DataJointError"]
__version__ = "0.1.0"

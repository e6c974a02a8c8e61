"""The real DataJoint peer is installed and reaches the private MariaDB: the rig the compatibility tests use."""

import numpy as np

import djfs


def test_datajoint_and_djfs_share_one_server(dj, schema_name):
    schema = dj.Schema(schema_name)

    @schema
    class Session(dj.Manual):
        definition = """
        session_id : int
        ---
        trace : longblob
        """

    Session.insert1({"session_id": 1, "trace": np.arange(5.0)})
    assert dj.__version__.startswith("0.14.")
    rows = djfs.conn().query(f"SELECT session_id FROM `{schema_name}`.`session`")
    assert [tuple(row) for row in rows] == [(1,)]

"""djfs's queries against DataJoint's own, row for row, on one pipeline in the same MariaDB.

DataJoint 0.14 (the real package, fixture ``dj``) declares and fills the pipeline; djfs reads it through
``djfs.VirtualModule`` with no class definitions of its own; every query shape below is built the same way on
both sides and must return the same heading and the same rows. The other direction: tables djfs declares are
read by DataJoint's ``dj.VirtualModule``.
"""

from __future__ import annotations

import datetime
import decimal
import types

import numpy as np
import pytest

import djfs


def normalize(value):
    if isinstance(value, np.ndarray):
        return ("array", value.shape, tuple(np.round(value.astype(float).ravel(), 6).tolist()))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (float, decimal.Decimal)):
        return None if np.isnan(float(value)) else round(float(value), 6)  # a frame shows NULL as NaN
    return value


def result(query, **fetch):
    """Heading names and rows (as sorted tuples unless an order is asked for) of a query."""
    got = [tuple((name, normalize(row[name])) for name in query.heading.names)
           for row in query.fetch(as_dict=True, **fetch)]
    return list(query.heading.names), got if "order_by" in fetch else sorted(got, key=repr)


@pytest.fixture
def pipeline(dj, schema_name, db_config):
    """A DataJoint-declared pipeline with a part table, a renamed and a nullable foreign key, and NULLs."""
    schema = dj.Schema(schema_name)

    @schema
    class Subject(dj.Manual):
        definition = """
        subject : int
        ---
        species : varchar(16)
        sex = null : enum('M', 'F')
        weight = null : float
        notes = "" : varchar(64)
        """

    @schema
    class Rig(dj.Lookup):
        definition = """
        rig : varchar(8)
        ---
        room : varchar(8)
        """
        contents = [("A", "r1"), ("B", "r2"), ("C", "r2")]

    @schema
    class Session(dj.Manual):
        definition = """
        -> Subject
        session : smallint
        ---
        -> [nullable] Rig
        session_date : date
        notes = "" : varchar(64)
        """

    @schema
    class Scan(dj.Imported):
        definition = """
        -> Session
        scan : tinyint
        ---
        depth : float
        frames : longblob
        """

        class Roi(dj.Part):
            definition = """
            -> master
            roi : int
            ---
            area : double
            """

    @schema
    class Pairing(dj.Manual):
        definition = """
        -> Subject
        -> Subject.proj(partner='subject')
        ---
        strength = null : double
        """

    Subject.insert([(1, "mouse", "F", 21.5, "calm"), (2, "rat", "M", None, ""), (3, "mouse", None, 19.0, "x"),
                    (4, "rat", "F", 30.25, "")])
    day = datetime.date(2024, 1, 1)
    Session.insert([(1, 1, "A", day, "first"), (1, 2, None, day + datetime.timedelta(1), ""),
                    (2, 1, "B", day + datetime.timedelta(2), "x"), (3, 1, "A", day + datetime.timedelta(3), ""),
                    (3, 2, "C", day + datetime.timedelta(4), "calm")])
    scans = [(1, 1, 0, 100.0), (1, 1, 1, 150.0), (1, 2, 0, 90.0), (2, 1, 0, 200.0), (3, 2, 0, 120.0),
             (3, 2, 1, 125.5)]
    Scan.insert([(*s, np.arange(s[2] + 2, dtype=np.float64) * s[3]) for s in scans], allow_direct_insert=True)
    Scan.Roi.insert([(*s[:3], r, round(1.5 * r + s[3] / 100, 3)) for s in scans for r in range(s[2] + 2)
                     if s[:2] != (3, 2)], allow_direct_insert=True)
    Pairing.insert([(1, 2, 0.5), (2, 3, None), (3, 1, 2.0), (4, 1, 1.0)])
    datajoint_side = types.SimpleNamespace(Subject=Subject, Rig=Rig, Session=Session, Scan=Scan, Pairing=Pairing,
                                           U=dj.U, Not=dj.Not, Top=dj.Top)
    lab = djfs.VirtualModule("lab", schema_name)
    djfs_side = types.SimpleNamespace(Subject=lab.Subject, Rig=lab.Rig, Session=lab.Session, Scan=lab.Scan,
                                      Pairing=lab.Pairing, U=djfs.U, Not=djfs.Not, Top=djfs.Top)
    return datajoint_side, djfs_side


SHAPES = {
    "table": lambda m: m.Subject,
    "dict": lambda m: m.Subject & {"species": "mouse"},
    "sql string": lambda m: m.Subject & "weight > 20",
    "negated dict": lambda m: m.Subject - {"sex": "M"},
    "list of dicts (OR)": lambda m: m.Subject & [{"subject": 1}, {"subject": 3}],
    "negated list": lambda m: m.Subject - [{"subject": 1}, "species = 'rat'"],
    "dict with None": lambda m: m.Session & {"rig": None},
    "Not of a dict": lambda m: m.Session & m.Not({"rig": "A"}),
    "semijoin": lambda m: m.Subject & m.Session.proj(),
    "antijoin": lambda m: m.Subject - m.Session.proj(),
    "semijoin by a restricted part": lambda m: m.Scan & (m.Scan.Roi & "area > 2"),
    "antijoin by a part": lambda m: m.Scan - m.Scan.Roi,
    "join": lambda m: m.Session * m.Scan,
    "join with a projection": lambda m: m.Subject.proj("species") * m.Session,
    "join on a nullable foreign key": lambda m: m.Session * m.Rig,
    "master and part": lambda m: m.Scan * m.Scan.Roi,
    "join of three": lambda m: m.Subject.proj("species") * m.Session.proj("rig") * m.Scan.proj("depth"),
    "proj of the key": lambda m: m.Scan.proj(),
    "proj of one attribute": lambda m: m.Scan.proj("depth"),
    "proj excluding one": lambda m: m.Scan.proj(..., "-frames"),
    "rename of the key": lambda m: m.Subject.proj(animal="subject"),
    "computed attribute": lambda m: m.Scan.proj(d2="depth * 2"),
    "computed with NULLs and text": lambda m: m.Subject.proj(w="coalesce(weight, -1)",
                                                             label="concat(species, '-', subject)"),
    # DataJoint needs '%%' in computed attributes (a single '%' fails there); djfs takes both
    "computed with % and LIKE": lambda m: (m.Subject & "notes LIKE '%a%'").proj(odd="subject %% 2",
                                                                               m="species LIKE 'm%%'"),
    "renames both ways": lambda m: m.Subject & m.Pairing.proj(x="subject", subject="partner"),
    "renamed foreign key": lambda m: m.Pairing * m.Subject.proj(partner="subject", partner_species="species"),
    "aggr count": lambda m: m.Session.aggr(m.Scan, n="count(*)"),
    "aggr keep all rows": lambda m: m.Session.aggr(m.Scan, n="count(scan)", keep_all_rows=True),
    "aggr with attribute": lambda m: m.Subject.aggr(m.Session.proj(), "species", n="count(session)",
                                                    keep_all_rows=True),
    "aggr over a part": lambda m: m.Scan.aggr(m.Scan.Roi, total="sum(area)", biggest="max(area)"),
    "aggr over a grandchild": lambda m: m.Session.aggr(m.Scan.Roi, n="count(*)", a="avg(area)"),
    "restricted aggr": lambda m: m.Subject.aggr(m.Scan, deepest="max(depth)") & "deepest > 100",
    "U distinct": lambda m: m.U("species") & m.Subject,
    "U distinct with NULLs": lambda m: m.U("rig") & m.Session,
    "U aggr": lambda m: m.U("species").aggr(m.Subject, n="count(*)", w="avg(weight)"),
    "U() aggr": lambda m: m.U().aggr(m.Scan.Roi, n="count(*)", a="sum(area)"),
    "U promotion": lambda m: m.Session * m.U("session_date"),
    "restricted join": lambda m: (m.Session & "session_date > '2024-01-02'") * m.Scan & "depth < 150",
    "proj of a join": lambda m: (m.Session * m.Scan).proj("depth", "session_date") & {"subject": 1},
    "lookup by projection": lambda m: m.Rig * m.Session.proj("rig"),
    "part restricted by master": lambda m: m.Scan.Roi & m.Scan.proj() & "roi > 0",
    "Top": lambda m: m.Scan & m.Top(3, "depth DESC"),
    "Top with offset": lambda m: m.Scan.proj("depth") & m.Top(2, ["subject", "depth"], offset=1),
    "union of keys": lambda m: (m.Subject & "species = 'mouse'").proj() + (m.Subject & "weight > 25").proj(),
    "union with attributes": lambda m: (m.Subject.proj("species") & "subject < 3")
    + (m.Subject.proj("weight") & "subject > 1"),
    "restricted union": lambda m: ((m.Session & "rig = 'A'").proj() + (m.U("subject", "session") & m.Scan)
                                   - {"session": 2}) & "subject < 3",
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_same_rows_as_datajoint(pipeline, shape):
    datajoint_side, djfs_side = pipeline
    expected = result(SHAPES[shape](datajoint_side))
    got = result(SHAPES[shape](djfs_side))
    assert got == expected
    assert got[1], "every shape selects some rows"
    if shape != "U distinct with NULLs":  # DataJoint counts it with COUNT(DISTINCT rig), which skips the NULL
        instance = lambda query: query() if isinstance(query, type) else query  # noqa: E731 (no len(class))
        assert len(SHAPES[shape](djfs_side)) == len(instance(SHAPES[shape](datajoint_side)))
    else:
        assert len(SHAPES[shape](djfs_side)) == len(got[1])


ORDERED = [
    ("Scan", dict(order_by="depth DESC", limit=3)),
    ("Scan", dict(order_by=["subject", "depth"], limit=2, offset=1)),
    ("Subject", dict(order_by="KEY DESC")),
    ("join", dict(order_by="KEY", limit=4)),
]


@pytest.mark.parametrize("name, fetch", ORDERED)
def test_same_order_and_limits_as_datajoint(pipeline, name, fetch):
    datajoint_side, djfs_side = pipeline
    build = SHAPES["join"] if name == "join" else (lambda m: getattr(m, name))
    assert result(build(djfs_side), **fetch) == result(build(datajoint_side), **fetch)


def test_same_refusals_as_datajoint(pipeline, dj):
    datajoint_side, djfs_side = pipeline
    for build, message in ((lambda m: m.Subject * m.Session, "dependent attribute `notes`"),
                           (lambda m: m.Subject & m.Session, "dependent attribute `notes`"),
                           (lambda m: m.Subject + m.Session, "share the same primary key"),
                           (lambda m: m.Subject + m.Subject.proj("species"), "must not share any secondary")):
        with pytest.raises(dj.DataJointError, match=message):
            build(datajoint_side)
        with pytest.raises(djfs.errors.QueryError, match=message):
            build(djfs_side)


def test_virtual_module_tiers_and_parts(pipeline):
    _, lab = pipeline
    assert issubclass(lab.Subject, djfs.Manual) and issubclass(lab.Rig, djfs.Lookup)
    assert issubclass(lab.Scan, djfs.Imported) and issubclass(lab.Scan.Roi, djfs.Part)
    assert lab.Scan.Roi.master is lab.Scan and lab.Scan.Roi.table_name == "_scan__roi"
    assert "-> Subject.proj(partner=\"subject\")" in lab.Pairing.describe()
    assert "-> [nullable] Rig" in lab.Session.describe()
    frames = (lab.Scan & {"subject": 2}).fetch1("frames")
    np.testing.assert_array_equal(frames, np.arange(2) * 200.0)


def test_datajoint_reads_tables_djfs_declared(dj, schema, schema_name):
    @schema
    class Animal(djfs.Manual):
        definition = """
        animal : int
        ---
        name : varchar(16)
        born = null : date
        """

    @schema
    class Kind(djfs.Lookup):
        definition = """
        kind : varchar(8)
        """
        contents = [("a",), ("b",)]

    @schema
    class Measure(djfs.Computed):
        definition = """
        -> Animal
        -> Kind
        ---
        value : double
        trace : longblob
        """

        class Point(djfs.Part):
            definition = """
            -> master
            point : int
            ---
            -> Animal.proj(neighbour='animal')
            """

        def make(self, key):
            self.insert1({**key, "value": key["animal"] * 1.5, "trace": np.arange(key["animal"])})
            self.Point.insert1({**key, "point": 0, "neighbour": 1})

    Animal.insert([(1, "a", None), (2, "b", datetime.date(2020, 5, 1))])
    Measure.populate()
    vm = dj.VirtualModule("vm", schema_name)
    assert {cls.__name__ for cls in (vm.Animal, vm.Kind, vm.Measure, vm.Measure.Point)} == \
        {"Animal", "Kind", "Measure", "Point"}
    for build in (lambda m: m.Animal, lambda m: m.Measure * m.Animal, lambda m: m.Measure.Point * m.Kind,
                  lambda m: m.Animal.aggr(m.Measure, total="sum(value)"),
                  lambda m: m.Measure.Point * m.Animal.proj(neighbour="animal", neighbour_name="name")):
        assert result(build(vm)) == result(build(types.SimpleNamespace(Animal=Animal, Kind=Kind, Measure=Measure)))
    np.testing.assert_array_equal((vm.Measure & {"animal": 2, "kind": "a"}).fetch1("trace"), np.arange(2))


@pytest.mark.parametrize("shape", ["aggr count", "join of three", "U aggr"])
def test_same_frames_as_datajoint(pipeline, shape):
    """``fetch(format="frame")``: the same index (the primary key) and the same values as DataJoint's."""
    datajoint_side, djfs_side = pipeline
    expected = SHAPES[shape](datajoint_side).fetch(format="frame")
    got = SHAPES[shape](djfs_side).fetch(format="frame")
    assert list(got.index.names) == list(expected.index.names) and list(got.columns) == list(expected.columns)
    as_rows = lambda frame: sorted((tuple(map(normalize, index if isinstance(index, tuple) else (index,))),  # noqa
                                    tuple(map(normalize, row))) for index, row in zip(frame.index, frame.values))
    assert as_rows(got) == as_rows(expected) and len(got) > 0

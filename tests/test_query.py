"""The query algebra (join, proj, aggr, U, restriction by queries) on djfs's own tables, against a real MariaDB.

Row-for-row agreement with DataJoint itself is in test_datajoint_peer.py; these tests pin djfs's own
behaviour: headings, errors, external attributes flowing through queries, fetch forms of derived queries.
"""

import numpy as np
import pandas
import pytest

import djfs
from djfs.errors import DeclarationError, QueryError


@pytest.fixture
def lab(schema):
    @schema
    class Subject(djfs.Manual):
        definition = """
        subject : int
        ---
        species = "mouse" : varchar(16)
        notes = "" : varchar(64)
        """

    @schema
    class Session(djfs.Manual):
        definition = """
        -> Subject
        session : smallint
        ---
        notes = "" : varchar(64)
        rig = null : varchar(8)
        """

    @schema
    class Scan(djfs.Manual):
        definition = """
        -> Session
        scan : tinyint
        ---
        depth : float
        frames : longblob
        """

    @schema
    class Pairing(djfs.Manual):
        definition = """
        -> Subject
        -> Subject.proj(partner='subject')
        ---
        strength = 1.0 : double
        """

    Subject.insert([(1, "mouse", "a"), (2, "rat", "b"), (3, "mouse", "c")])
    Session.insert([(1, 1, "x", "A"), (1, 2, "y", None), (2, 1, "z", "B")])
    Scan.insert([(1, 1, s, 100.0 * s, np.arange(s + 1)) for s in range(3)] + [(2, 1, 0, 50.0, np.zeros(2))])
    Pairing.insert([(1, 2, 0.5), (2, 3, 2.0)])
    return dict(Subject=Subject, Session=Session, Scan=Scan, Pairing=Pairing)


def rows(query, *order):
    return query.fetch(as_dict=True, order_by=list(order) or "KEY")


def test_join_heading_and_rows(lab):
    Session, Scan, Subject = lab["Session"], lab["Scan"], lab["Subject"]
    joined = Subject.proj("species") * Scan
    assert joined.primary_key == ["subject", "session", "scan"]
    assert joined.heading.names == ["subject", "session", "scan", "species", "depth", "frames"]
    assert len(joined) == 4
    assert [r["species"] for r in rows(joined)] == ["mouse", "mouse", "mouse", "rat"]
    # blobs travel through joins and are decoded when fetched
    np.testing.assert_array_equal(rows(joined)[2]["frames"], np.arange(3))
    # the join is commutative in rows
    assert len(Scan * Session.proj()) == 4 and len(Session.proj() * Scan) == 4


def test_join_on_secondary_attributes_of_both_is_refused(lab):
    Session, Subject = lab["Session"], lab["Subject"]
    with pytest.raises(QueryError, match="dependent attribute `notes`"):
        Session * Subject
    with pytest.raises(QueryError, match="dependent attribute `notes`"):
        Session & Subject
    assert len(Session * Subject.proj(subject_notes="notes")) == 3
    assert len(Session @ Subject) == 0  # permissive join: notes differ everywhere
    assert len(Session ^ Subject) == 0


def test_proj_forms(lab):
    Subject, Session, Scan = lab["Subject"], lab["Session"], lab["Scan"]
    assert Subject.proj().heading.names == ["subject"]
    assert Subject.proj("notes").heading.names == ["subject", "notes"]
    assert Subject.proj(..., "-notes").heading.names == ["subject", "species"]
    renamed = Subject.proj(animal="subject", kind="species")
    assert renamed.primary_key == ["animal"] and renamed.heading.names == ["animal", "kind"]
    assert rows(renamed.proj(), "animal") == [{"animal": 1}, {"animal": 2}, {"animal": 3}]
    assert [r["twice"] for r in rows(Scan.proj(twice="depth * 2"))] == [0.0, 200.0, 400.0, 100.0]
    odd = [r["odd"] for r in rows(Scan.proj(odd="scan % 2", m="'m%' LIKE 'm%%'"))]  # '%' as SQL's, or DataJoint's '%%'
    assert odd == [0, 1, 0, 0]
    kept = Subject.proj(same="(subject)")
    assert kept.primary_key == ["subject"] and [r["same"] for r in rows(kept)] == [1, 2, 3]
    # restrictions after a projection name the projected attributes
    assert len(renamed & {"animal": 2}) == 1 and len(renamed & "kind = 'mouse'") == 2
    assert len(Scan.proj(d="depth") & "d > 50") == 2
    with pytest.raises(QueryError, match="not found"):
        Subject.proj("nope")
    with pytest.raises(QueryError, match="Cannot exclude primary key"):
        Subject.proj("-subject")
    with pytest.raises(QueryError, match="already exists"):
        Subject.proj("species", species="notes")
    with pytest.raises(QueryError):  # the server refuses a bad SQL expression, naming it
        len(Subject.proj(x="no_such_column + 1"))


def test_aggr_and_u(lab):
    Subject, Session, Scan = lab["Subject"], lab["Session"], lab["Scan"]
    counts = Session.aggr(Scan, n="count(*)", deepest="max(depth)")
    assert counts.primary_key == ["subject", "session"]
    assert rows(counts) == [{"subject": 1, "session": 1, "n": 3, "deepest": 200.0},
                            {"subject": 2, "session": 1, "n": 1, "deepest": 50.0}]
    everyone = Subject.aggr(Session.proj(), "species", n="count(session)", keep_all_rows=True)
    assert [(r["subject"], r["species"], r["n"]) for r in rows(everyone)] == [(1, "mouse", 2), (2, "rat", 1),
                                                                             (3, "mouse", 0)]
    assert len(counts & "n > 1") == 1
    assert (djfs.U("species") & Subject).fetch("species", order_by="species").tolist() == ["mouse", "rat"]
    per_species = djfs.U("species").aggr(Subject, n="count(*)")
    assert per_species.primary_key == ["species"]
    assert rows(per_species) == [{"species": "mouse", "n": 2}, {"species": "rat", "n": 1}]
    total = djfs.U().aggr(Scan, n="count(*)", mean="avg(depth)")
    assert total.primary_key == [] and total.fetch1("n") == 4
    promoted = Session * djfs.U("rig")
    assert promoted.primary_key == ["subject", "session", "rig"]
    with pytest.raises(QueryError, match="no attribute 'color'"):
        djfs.U("color") & Subject


def test_top(lab):
    Session, Scan = lab["Session"], lab["Scan"]
    deepest = Scan & djfs.Top(2, "depth DESC")
    assert sorted(deepest.fetch("depth").tolist()) == [100.0, 200.0]
    # the Top holds through later operators (DataJoint 0.14.10 loses it in a join)
    second = (Scan.proj("depth") & djfs.Top(2, ["subject", "depth"], offset=1)) * Session.proj("rig")
    assert rows(second) == [{"subject": 1, "session": 1, "scan": 1, "depth": 100.0, "rig": "A"},
                            {"subject": 1, "session": 1, "scan": 2, "depth": 200.0, "rig": "A"}]
    assert len(Scan & djfs.Top(None, "KEY", offset=3)) == 1
    with pytest.raises(QueryError, match="Top"):
        Scan - djfs.Top(1)
    with pytest.raises(QueryError, match="integer"):
        djfs.Top("3")


def test_restriction_by_queries_lists_and_negation(lab):
    Subject, Session, Scan = lab["Subject"], lab["Session"], lab["Scan"]
    assert (Subject & Scan).fetch("subject").tolist() == [1, 2]
    assert (Subject - Session.proj()).fetch("subject").tolist() == [3]
    assert len(Session & (Scan & "depth > 150")) == 1
    assert len(Session - (Scan & "depth > 150")) == 2
    assert len(Scan & [{"scan": 0}, "depth = 200"]) == 3
    assert len(Scan & djfs.Not({"scan": 0})) == 2
    assert len(Scan & (Session & {"rig": None})) == 0
    assert len(Session & {"rig": None}) == 1
    assert len((Subject * Session.proj(session_notes="notes")) & {"species": "rat"}) == 1


def test_fetch_forms_of_derived_queries(lab):
    Session, Scan = lab["Session"], lab["Scan"]
    query = Session.proj("rig") * Scan.proj("depth")
    records = query.fetch(order_by="KEY")
    assert records.dtype.names == ("subject", "session", "scan", "rig", "depth")
    depth, keys = query.fetch("depth", "KEY", order_by="depth DESC", limit=2)
    assert depth.tolist() == [200.0, 100.0] and keys[0] == {"subject": 1, "session": 1, "scan": 2}
    assert (query & {"scan": 2}).fetch1("depth") == 200.0
    assert [r["scan"] for r in query.head(2, as_dict=True)] == [0, 1]
    assert [r["scan"] for r in query.tail(2, as_dict=True)] == [2, 0]
    frame = query.fetch(format="frame")
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.index.names) == ["subject", "session", "scan"] and list(frame.columns) == ["rig", "depth"]
    assert frame.loc[(2, 1, 0), "depth"] == 50.0
    with djfs.config.override(fetch_format="frame"):
        assert isinstance(query.fetch(), pandas.DataFrame)
    assert bool(query) and {"scan": 1} in query and len(list(query)) == 4
    assert "rig" in repr(query)
    # a frame goes back in as rows, its index as the key (DataJoint's round trip)
    subjects = lab["Subject"].fetch(format="frame")
    lab["Subject"].delete()
    lab["Subject"].insert(subjects)
    assert len(lab["Subject"]) == 3 and (lab["Subject"] & {"subject": 2}).fetch1("species") == "rat"


def test_blob_attributes_refused_in_restrictions(lab):
    Scan = lab["Scan"]
    with pytest.raises(QueryError, match="frames"):
        Scan & {"frames": b"x"}
    with pytest.raises(QueryError, match="frames"):
        Scan & "frames IS NULL"
    with pytest.raises(QueryError, match="frames"):
        Scan ^ Scan.proj("frames")
    assert len(Scan & "depth > 0 AND 'frames' <> ''") == 3  # a word inside a literal is not the attribute


def test_renamed_foreign_key(lab, schema):
    Pairing, Subject = lab["Pairing"], lab["Subject"]
    assert Pairing.primary_key == ["subject", "partner"]
    partners = Pairing * Subject.proj(partner="subject", partner_species="species")
    assert [(r["subject"], r["partner"], r["partner_species"]) for r in rows(partners)] == [(1, 2, "rat"),
                                                                                            (2, 3, "mouse")]
    with pytest.raises(djfs.errors.IntegrityError):
        Pairing.insert1((1, 9, 1.0))
    assert "-> Subject.proj(partner=\"subject\")" in Pairing.describe()
    with pytest.raises(DeclarationError, match="not in the primary key"):
        @schema
        class Bad(djfs.Manual):
            definition = """
            -> Subject.proj(other='species')
            """


def test_external_attributes_flow_through_queries(schema, backend):
    backend(schema)

    @schema
    class Movie(djfs.Manual):
        definition = """
        movie : int
        ---
        title : varchar(32)
        frames : external
        """

    @schema
    class Rating(djfs.Manual):
        definition = """
        -> Movie
        critic : varchar(16)
        ---
        stars : tinyint
        """

    Movie.insert([(1, "one", np.arange(4.0)), (2, "two", np.ones((2, 2)))])
    Rating.insert([(1, "ann", 3), (1, "bob", 5), (2, "ann", 1)])
    joined = Movie.proj("frames", name="title") * Rating
    got = joined.fetch(as_dict=True, order_by="KEY")
    assert [r["name"] for r in got] == ["one", "one", "two"]
    np.testing.assert_array_equal(got[1]["frames"], np.arange(4.0))
    np.testing.assert_array_equal((joined & {"critic": "ann", "movie": 2}).fetch1("frames"), np.ones((2, 2)))
    best = Movie.aggr(Rating, "frames", best="max(stars)")
    np.testing.assert_array_equal((best & "best = 5").fetch1("frames"), np.arange(4.0))
    for restriction in ({"frames": "x"}, "frames IS NOT NULL", "`frames` <> ''", Movie.proj("frames")):
        with pytest.raises(QueryError, match="frames"):
            joined & restriction

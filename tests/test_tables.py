"""The relational core against a real MariaDB: tiers, definitions, insert, fetch, restrict, delete, drop."""

import datetime
import decimal
import uuid

import numpy as np
import pytest

import djfs
from djfs.errors import DataError, DeclarationError, DuplicateError, IntegrityError, QueryError


@pytest.fixture
def lab(schema):
    @schema
    class Species(djfs.Lookup):
        definition = """
        # animal species
        species : varchar(32)
        """
        contents = [("mouse",), ("rat",)]

    @schema
    class Mouse(djfs.Manual):
        definition = """
        # a mouse
        mouse_id : int unsigned      # unique id
        ---
        -> Species
        dob = null : date
        sex = "unknown" : enum("M", "F", "unknown")
        weight = 20.5 : float
        """

    @schema
    class Session(djfs.Manual):
        definition = """
        -> Mouse
        session : smallint
        ---
        started = CURRENT_TIMESTAMP : timestamp
        notes = "" : varchar(255)
        """

    @schema
    class Trace(djfs.Imported):
        definition = """
        -> Session
        ---
        trace : longblob
        meta = null : json
        """

    @schema
    class Analysis(djfs.Computed):
        definition = """
        -> Trace
        ---
        score : double
        """

        class Roi(djfs.Part):
            definition = """
            -> master
            roi : int
            ---
            uid : uuid
            flag : bool
            """

    return dict(schema=schema, Species=Species, Mouse=Mouse, Session=Session, Trace=Trace,
                Analysis=Analysis)


def test_table_names_and_tiers(lab, schema):
    assert lab["Species"].table_name == "#species"
    assert lab["Mouse"].table_name == "mouse"
    assert lab["Trace"].table_name == "_trace"
    assert lab["Analysis"].table_name == "__analysis"
    assert lab["Analysis"].Roi.table_name == "__analysis__roi"
    assert set(schema.list_tables()) == {"#species", "mouse", "session", "_trace", "__analysis",
                                         "__analysis__roi"}
    assert schema.class_names()["Analysis.Roi"] == "__analysis__roi"


def test_lookup_contents_and_heading(lab):
    assert sorted(lab["Species"].fetch("species")) == ["mouse", "rat"]
    heading = lab["Mouse"].heading
    assert heading.primary_key == ["mouse_id"]
    assert heading.secondary_attributes == ["species", "dob", "sex", "weight"]
    assert heading["dob"].nullable and heading["mouse_id"].comment == "unique id"
    assert heading.comment == "a mouse"
    assert lab["Session"].heading.primary_key == ["mouse_id", "session"]


def test_insert_forms_and_fetch_forms(lab):
    Mouse = lab["Mouse"]
    Mouse.insert1({"mouse_id": 1, "species": "mouse", "dob": datetime.date(2024, 1, 2), "sex": "F"})
    Mouse.insert1((2, "rat", None, "M", 30.0))
    records = np.array([(3, "mouse", None, "unknown", 21.0)],
                       dtype=[("mouse_id", int), ("species", "O"), ("dob", "O"), ("sex", "O"), ("weight", float)])
    Mouse.insert(records)
    Mouse.insert([{"mouse_id": 4, "species": "mouse"}, {"mouse_id": 5, "species": "rat"}])
    assert len(Mouse) == 5 and bool(Mouse) and {"mouse_id": 3} in Mouse
    everything = Mouse.fetch(order_by="mouse_id")
    assert everything.dtype.names == ("mouse_id", "species", "dob", "sex", "weight")
    assert list(everything["mouse_id"]) == [1, 2, 3, 4, 5]
    assert everything[0]["dob"] == datetime.date(2024, 1, 2)
    assert everything[3]["sex"] == "unknown" and everything[3]["weight"] == pytest.approx(20.5)
    dicts = Mouse.fetch(as_dict=True, order_by="mouse_id DESC", limit=2)
    assert [d["mouse_id"] for d in dicts] == [5, 4]
    ids, species = Mouse.fetch("mouse_id", "species", order_by="KEY")
    assert list(ids) == [1, 2, 3, 4, 5] and species[1] == "rat"
    assert Mouse.fetch("KEY", order_by="mouse_id", limit=2, offset=1) == [{"mouse_id": 2}, {"mouse_id": 3}]
    assert (Mouse & {"mouse_id": 2}).fetch1() == {"mouse_id": 2, "species": "rat", "dob": None, "sex": "M",
                                                  "weight": 30.0}
    assert (Mouse & "mouse_id = 2").fetch1("species") == "rat"
    assert (Mouse & {"mouse_id": 2}).fetch1("KEY", "sex") == ({"mouse_id": 2}, "M")
    with pytest.raises(QueryError, match="exactly one row"):
        Mouse.fetch1()


def test_restrictions(lab):
    Mouse, Session = lab["Mouse"], lab["Session"]
    Mouse.insert([(i, "mouse" if i % 2 else "rat", None, "F", 20.0 + i) for i in range(1, 7)])
    Session.insert([{"mouse_id": 1, "session": 1}, {"mouse_id": 1, "session": 2}, {"mouse_id": 4, "session": 1}])
    assert len(Mouse & {"species": "rat"}) == 3
    assert len(Mouse & [{"mouse_id": 1}, {"mouse_id": 2}, "mouse_id > 5"]) == 3
    assert len(Mouse - {"species": "rat"}) == 3
    assert sorted((Mouse & Session).fetch("mouse_id")) == [1, 4]
    assert sorted((Mouse - Session).fetch("mouse_id")) == [2, 3, 5, 6]
    assert len(Mouse & {"species": "rat"} & "weight > 23") == 2
    assert len(Mouse & {"nonexistent": 3}) == 6  # unknown keys are ignored, as in DataJoint
    assert len(Mouse & []) == 0
    # a value with quotes and SQL travels as a bound parameter
    assert len(Mouse & {"species": "x' OR '1'='1"}) == 0
    assert len(Mouse & {"dob": None}) == 6


def test_blob_json_uuid_bool_roundtrip(lab):
    lab["Mouse"].insert1({"mouse_id": 1, "species": "mouse"})
    lab["Session"].insert1({"mouse_id": 1, "session": 1, "notes": "ünïcode ✓"})
    trace = np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32)
    lab["Trace"].insert1({"mouse_id": 1, "session": 1, "trace": trace, "meta": {"fs": 30.0, "ok": [1, 2]}})
    row = lab["Trace"].fetch1()
    np.testing.assert_array_equal(row["trace"], trace)
    assert row["meta"] == {"fs": 30.0, "ok": [1, 2]}
    assert lab["Session"].fetch1("notes") == "ünïcode ✓"
    assert isinstance(lab["Session"].fetch1("started"), datetime.datetime)
    lab["Analysis"].insert1({"mouse_id": 1, "session": 1, "score": 0.5})
    uid = uuid.uuid4()
    lab["Analysis"].Roi.insert1({"mouse_id": 1, "session": 1, "roi": 7, "uid": uid, "flag": True})
    got = lab["Analysis"].Roi.fetch1()
    assert got["uid"] == uid and got["flag"] == 1
    assert len(lab["Analysis"].Roi & {"uid": uid}) == 1
    with pytest.raises(QueryError, match="trace"):
        lab["Trace"] & {"trace": b"x"}


def test_skip_duplicates_replace_ignore_extra(lab):
    Mouse = lab["Mouse"]
    Mouse.insert1({"mouse_id": 1, "species": "mouse"})
    with pytest.raises(DuplicateError, match="skip_duplicates"):
        Mouse.insert1({"mouse_id": 1, "species": "rat"})
    Mouse.insert1({"mouse_id": 1, "species": "rat"}, skip_duplicates=True)
    assert (Mouse & {"mouse_id": 1}).fetch1("species") == "mouse"
    Mouse.insert1({"mouse_id": 1, "species": "rat"}, replace=True)
    assert (Mouse & {"mouse_id": 1}).fetch1("species") == "rat"
    with pytest.raises(DataError, match="unknown attribute 'color'"):
        Mouse.insert1({"mouse_id": 2, "species": "rat", "color": "brown"})
    Mouse.insert1({"mouse_id": 2, "species": "rat", "color": "brown"}, ignore_extra_fields=True)
    assert len(Mouse) == 2


@pytest.mark.parametrize("row, message", [
    ({"mouse_id": "abc", "species": "mouse"}, r"mouse`\.mouse_id.*integer"),
    ({"mouse_id": 9}, "missing value for attribute 'species'"),
    ({"mouse_id": 9, "species": "mouse", "weight": "heavy"}, r"weight.*number"),
    ({"mouse_id": 9, "species": "mouse", "sex": "X"}, "sex"),
    ({"mouse_id": 9, "species": "mouse", "dob": 3.5}, "dob"),
])
def test_bad_rows_name_table_and_attribute_and_write_nothing(lab, row, message):
    Mouse = lab["Mouse"]
    with pytest.raises(djfs.DjfsError, match=message):
        Mouse.insert([{"mouse_id": 100, "species": "mouse"}, row])
    assert len(Mouse) == 0  # the whole call is one transaction


def test_broken_foreign_key_writes_nothing(lab):
    lab["Mouse"].insert1({"mouse_id": 1, "species": "mouse"})
    with pytest.raises(IntegrityError, match="foreign key"):
        lab["Session"].insert([{"mouse_id": 1, "session": 1}, {"mouse_id": 99, "session": 1}])
    assert len(lab["Session"]) == 0
    with pytest.raises(IntegrityError):
        lab["Mouse"].insert1({"mouse_id": 2, "species": "dog"})


def test_delete_cascades_in_one_transaction(lab):
    Mouse, Session, Trace, Analysis = lab["Mouse"], lab["Session"], lab["Trace"], lab["Analysis"]
    Mouse.insert([(1, "mouse", None, "F", 20.0), (2, "rat", None, "M", 21.0)])
    Session.insert([{"mouse_id": m, "session": s} for m in (1, 2) for s in (1, 2)])
    Trace.insert([{"mouse_id": m, "session": s, "trace": np.arange(3)} for m in (1, 2) for s in (1, 2)])
    Analysis.insert([{"mouse_id": m, "session": s, "score": 1.0} for m in (1, 2) for s in (1, 2)])
    Analysis.Roi.insert([{"mouse_id": 1, "session": 1, "roi": r, "uid": uuid.uuid4(), "flag": 0} for r in range(3)])
    with pytest.raises(IntegrityError):
        (Mouse & {"mouse_id": 1}).delete_quick()
    (Mouse & {"mouse_id": 1}).delete()
    assert Mouse.fetch("mouse_id").tolist() == [2]
    assert len(Session) == 2 and len(Trace) == 2 and len(Analysis) == 2 and len(Analysis.Roi) == 0
    (Session & {"session": 2}).delete()
    assert len(Session) == 1 and len(Analysis) == 1 and len(Mouse) == 1


def test_drop_and_describe(lab, schema):
    text = lab["Mouse"].describe()
    assert "# a mouse" in text and "mouse_id : int" in text and "---" in text
    assert "dob = null : date" in text
    lab["Mouse"].drop()
    assert "mouse" not in schema.list_tables() and "session" not in schema.list_tables()
    assert "__analysis__roi" not in schema.list_tables() and "#species" in schema.list_tables()


def test_big_batches_split_under_max_packet(lab, connection):
    Mouse, Session, Trace = lab["Mouse"], lab["Session"], lab["Trace"]
    Mouse.insert1({"mouse_id": 1, "species": "mouse"})
    Session.insert([{"mouse_id": 1, "session": s} for s in range(40)])
    limit = connection.max_allowed_packet()
    blob = np.zeros(limit // 8 // 10, dtype=np.float64)  # ~ a tenth of the packet each, 40 of them
    Trace.insert([{"mouse_id": 1, "session": s, "trace": blob} for s in range(40)])
    assert len(Trace) == 40


def test_methods_on_class_and_instance(lab):
    Mouse = lab["Mouse"]
    Mouse().insert1({"mouse_id": 1, "species": "mouse"})
    Mouse.insert1({"mouse_id": 2, "species": "mouse"})
    assert len(Mouse()) == len(Mouse) == 2
    assert Mouse().heading.names == Mouse.heading.names
    assert "mouse_id" in repr(Mouse)


@pytest.mark.parametrize("definition, message", [
    ("id : int\n---\nx : intt", "unknown type 'intt'"),
    ("id : int\n---\nx int", "can't parse this line"),
    ("id = null : int", "primary-key attribute can't be null"),
    ("id : longblob", "can't be in the primary key"),
    ("id : int\n---\n-> Nowhere", "'Nowhere' is not defined"),
    ("id : int\n---\nx : int\nx : int", "declared twice"),
    ("---\nx : int", "needs a primary key"),
    ("id : int\n---\nindex(nope)", "unknown attribute 'nope'"),
    ("Id : int", "can't parse"),
])
def test_malformed_definitions_quote_the_line(schema, definition, message):
    class Bad(djfs.Manual):
        pass
    Bad.definition = definition
    with pytest.raises(DeclarationError, match=message):
        schema(Bad, context={})
    assert "bad" not in schema.list_tables()


def test_more_types_and_defaults(schema):
    @schema
    class Everything(djfs.Manual):
        definition = """
        id : bigint unsigned
        ---
        a = -3 : tinyint
        b = 1.5 : decimal(5,2)
        c = "x:y # z" : varchar(16)   # a default with ':' and '#'
        d = "12:30:00" : time
        e = null : datetime
        f = 1 : bool
        g = null : double
        h = "" : char(4)
        unique index(h)
        """
    Everything.insert1({"id": 1})
    row = Everything.fetch1()
    assert row["a"] == -3 and row["b"] == decimal.Decimal("1.50") and row["c"] == "x:y # z"
    assert row["d"] == datetime.timedelta(hours=12, minutes=30) and row["e"] is None and row["f"] == 1
    Everything.insert1({"id": 2, "g": 2.5, "e": datetime.datetime(2020, 1, 1, 3), "h": "abc"})
    assert np.isnan(Everything.fetch("g", order_by="id")[0])
    with pytest.raises(DuplicateError):
        Everything.insert1({"id": 3, "h": "abc"})


def test_populate_calls_make_for_missing_keys(schema):
    @schema
    class Subject(djfs.Manual):
        definition = "subject : int"

    @schema
    class Method(djfs.Lookup):
        definition = "method : varchar(8)"
        contents = [("fast",), ("slow",)]

    @schema
    class Score(djfs.Computed):
        definition = """
        -> Subject
        -> Method
        ---
        score : double
        """
        calls = []

        def make(self, key):
            type(self).calls.append(dict(key))
            if key["subject"] == 3 and key["method"] == "slow":
                self.insert1({**key, "score": 1.0})
                raise RuntimeError("failed halfway")
            self.insert1({**key, "score": key["subject"] * (2.0 if key["method"] == "slow" else 1.0)})

    Subject.insert([(1,), (2,), (3,)])
    assert len(Score.key_source) == 6
    result = Score.populate(suppress_errors=True)
    assert result["success_count"] == 5
    assert [(key["subject"], key["method"], message) for key, message in result["error_list"]] == \
        [(3, "slow", "RuntimeError: failed halfway")]
    assert len(Score) == 5 and (3, "slow") not in set(zip(*Score.fetch("subject", "method")))  # rolled back
    assert (Score.key_source - Score).fetch("KEY") == [{"subject": 3, "method": "slow"}]  # as DataJoint: all keys
    assert Score.populate({"subject": 1}, "method = 'fast'") == {"success_count": 0, "error_list": []}
    assert len(Score.calls) == 6
    with pytest.raises(djfs.DjfsError, match="order"):
        Score.populate(order="sideways")
    with pytest.raises(RuntimeError, match="halfway"):
        Score.populate()


# -- bugs of issue 9: each test failed before its fix -----------------------------------------------------


def test_populate_uses_the_tables_own_key_source(schema):
    @schema
    class Subject(djfs.Manual):
        definition = """
        subject : int
        ---
        notes = "" : varchar(16)
        """

    @schema
    class Rig(djfs.Lookup):
        definition = """
        rig : varchar(8)
        ---
        notes = "" : varchar(16)
        """
        contents = [("a", "first"), ("b", "second")]

    @schema
    class Both(djfs.Computed):
        definition = """
        -> Subject
        -> Rig
        """

        def make(self, key):
            self.insert1(key)

    @schema
    class Some(djfs.Computed):
        definition = """
        -> Subject
        """

        @property
        def key_source(self):
            return Subject & "subject < 3"

        def make(self, key):
            self.insert1(key)

    Subject.insert([(1, "x"), (2, "y"), (3, "z")])
    # parents sharing the secondary attribute's name 'notes' still combine: the key source joins primary keys
    assert len(Both.key_source) == 6
    assert Both.populate(order="reverse", max_calls=2)["success_count"] == 2
    assert Both.fetch("KEY", order_by="KEY") == [{"subject": 3, "rig": "a"}, {"subject": 3, "rig": "b"}]
    Both.populate(keys=[{"subject": 1, "rig": "b"}])
    assert {"subject": 1, "rig": "b"} in Both and len(Both) == 3
    Both.populate(display_progress=True)
    assert len(Both) == 6
    Some.populate()
    assert sorted(Some.fetch("subject")) == [1, 2]


def test_failed_make_leaves_nothing_when_it_is_the_first_external_insert(schema, schema_name, connection, backend):
    """A new process (a new Schema object on existing tables) whose first external insert happens inside
    make(): no DDL runs in the transaction, so the master row goes away with the failure."""
    backend(schema)

    @schema
    class Source(djfs.Manual):
        definition = "source : int"

    def classes(target):
        class Result(djfs.Computed):
            definition = """
            -> Source
            ---
            value : external
            """

            def make(self, key):
                self.insert1({**key, "value": np.arange(10)})
                raise RuntimeError("make failed after its insert")

        return target(Result, context={"Source": Source})

    classes(schema)
    Source.insert1((1,))
    fresh = djfs.Schema(schema_name, connection=connection)  # as another process would open it
    backend(fresh)
    Result = classes(fresh)
    with pytest.raises(RuntimeError, match="make failed"):
        Result.populate()
    assert len(Result) == 0


def test_ddl_is_refused_inside_a_transaction(connection, schema_name, schema):
    with pytest.raises(QueryError, match="DDL"):
        with connection.transaction():
            connection.query(f"CREATE TABLE `{schema_name}`.`t` (i int PRIMARY KEY)")
    assert "t" not in schema.list_tables()


def test_none_for_an_attribute_with_a_default_sends_default(lab):
    Mouse = lab["Mouse"]
    Mouse.insert1({"mouse_id": 1, "species": "mouse", "sex": None, "weight": None, "dob": None})
    assert Mouse.fetch1("sex", "weight", "dob") == ("unknown", 20.5, None)
    with pytest.raises(DataError, match="species"):
        Mouse.insert1({"mouse_id": 2, "species": None})


def test_describe_shows_foreign_keys(lab):
    text = lab["Session"].describe()
    assert "-> Mouse" in text and "mouse_id" not in text
    assert "-> Species" in lab["Mouse"].describe()
    assert "-> Analysis" in lab["Analysis"].Roi.describe()


def test_deleted_rows_mark_their_external_entries_with_the_time(schema, connection, backend):
    backend(schema)

    @schema
    class Movie(djfs.Manual):
        definition = """
        movie : int
        ---
        frames : external
        """

    Movie.insert1((1, np.arange(5)))
    external = f"`{schema.database}`.`~external`"
    connection.query(f"UPDATE {external} SET timestamp = '2001-01-01 00:00:00'")
    (Movie & {"movie": 1}).delete()
    status, stamp = connection.query(f"SELECT status, timestamp FROM {external}").fetchone()
    assert status == "deleted" and stamp.year > 2001


SAFEMODE_SCRIPT = """
import sys, djfs
lab = djfs.VirtualModule("lab", sys.argv[1])
{action}
print("left:", len(lab.Mouse), len(lab.Session))
"""


def _run_on_terminal(script: str, answer: str | None, env: dict) -> tuple[int, str]:
    """Run ``script`` with a real terminal (a pty) as stdin and stdout; type ``answer`` at the question."""
    import os
    import subprocess
    import sys
    import time
    primary, secondary = os.openpty()
    process = subprocess.Popen([sys.executable, "-c", script[0], *script[1:]], stdin=secondary, stdout=secondary,
                               stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    output, deadline, answered = b"", time.monotonic() + 60, False
    while time.monotonic() < deadline:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the program ended and the terminal closed
            break
        if not chunk:
            break
        output += chunk
        if answer is not None and not answered and b"[yes, No]:" in output:
            os.write(primary, answer.encode() + b"\n")
            answered = True
    os.close(primary)
    return process.wait(timeout=30), output.decode(errors="replace")


def _run_without_terminal(script: str, database: str, env: dict):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", script, database], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.fixture
def safemode_env(lab, mariadb):
    import os
    lab["Mouse"].insert([(1, "mouse", None, "F", 20.0), (2, "rat", None, "M", 21.0)])
    lab["Session"].insert([{"mouse_id": 1, "session": s} for s in (1, 2, 3)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(DJ_HOST=mariadb.host, DJ_PORT=str(mariadb.port), DJ_USER=mariadb.user or "",
               DJ_PASS=mariadb.password or "", PYTHONPATH=os.pathsep.join(filter(None, [
                   os.path.dirname(os.path.dirname(djfs.__file__)), os.environ.get("PYTHONPATH")])))
    return env


@pytest.mark.parametrize("answer, left", [("yes", "left: 1 0"), ("no", "left: 2 3")])
def test_safemode_delete_asks_on_a_terminal(lab, safemode_env, answer, left):
    script = SAFEMODE_SCRIPT.format(action='(lab.Mouse & {"mouse_id": 1}).delete()')
    code, output = _run_on_terminal([script, lab["Mouse"].database], answer, safemode_env)
    assert code == 0, output
    assert "Deleting 1 rows from" in output and "Deleting 3 rows from" in output  # counts per table
    assert left in output
    assert len(lab["Mouse"]) == int(left.split()[1])


def test_safemode_drop_asks_on_a_terminal(lab, safemode_env, schema):
    script = SAFEMODE_SCRIPT.format(action="lab.Session.drop()")
    code, output = _run_on_terminal([script, lab["Mouse"].database], "no", safemode_env)
    assert code == 0, output
    assert "session` (3 rows)" in output and "Drop cancelled" in output
    assert "session" in schema.list_tables()


def test_safemode_refuses_without_a_terminal(lab, safemode_env):
    script = SAFEMODE_SCRIPT.format(action='(lab.Mouse & {"mouse_id": 1}).delete()')
    result = _run_without_terminal(script, lab["Mouse"].database, safemode_env)
    assert result.returncode != 0 and "stdin is not a terminal" in result.stderr
    assert len(lab["Session"]) == 3
    script = SAFEMODE_SCRIPT.format(action='(lab.Mouse & {"mouse_id": 1}).delete(safemode=False)')
    result = _run_without_terminal(script, lab["Mouse"].database, safemode_env)
    assert result.returncode == 0 and "left: 1 0" in result.stdout, result.stderr


def test_safemode_schema_drop(lab, safemode_env, schema_name, connection):
    script = SAFEMODE_SCRIPT.format(action="lab.schema.drop()")
    result = _run_without_terminal(script, schema_name, safemode_env)
    assert result.returncode != 0 and "pass force=True" in result.stderr
    code, output = _run_on_terminal([script.replace("print(", "0 and print("), schema_name], "yes", safemode_env)
    assert code == 0 and "session` (3 rows)" in output, output
    assert connection.query("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                            (schema_name,)).fetchone() is None


def test_part_rows_go_only_with_their_master(lab):
    lab["Mouse"].insert1({"mouse_id": 1, "species": "mouse"})
    lab["Session"].insert1({"mouse_id": 1, "session": 1})
    lab["Trace"].insert1({"mouse_id": 1, "session": 1, "trace": np.arange(3)})
    lab["Analysis"].insert1({"mouse_id": 1, "session": 1, "score": 1.0})
    Roi = lab["Analysis"].Roi
    Roi.insert([{"mouse_id": 1, "session": 1, "roi": r, "uid": uuid.uuid4(), "flag": 0} for r in range(2)])
    with pytest.raises(djfs.DjfsError, match="before deleting from its master"):
        (Roi & {"roi": 0}).delete()
    assert len(Roi) == 2  # rolled back
    assert (Roi & {"roi": 0}).delete(force_parts=True) == 1
    (lab["Analysis"] & {"session": 1}).delete()
    assert len(Roi) == 0 and len(lab["Analysis"]) == 0


def test_spawn_missing_classes(lab, schema_name, connection):
    context = {"Mouse": lab["Mouse"]}
    djfs.Schema(schema_name, connection=connection, create_schema=False).spawn_missing_classes(context)
    assert context["Mouse"] is lab["Mouse"]  # classes already there are left alone
    assert issubclass(context["Species"], djfs.Lookup) and issubclass(context["Trace"], djfs.Imported)
    assert issubclass(context["Analysis"], djfs.Computed) and issubclass(context["Session"], djfs.Manual)
    assert context["Analysis"].Roi.master is context["Analysis"] and "Roi" not in context
    assert sorted(context["Species"].fetch("species")) == ["mouse", "rat"]
    context["Mouse"].insert1({"mouse_id": 1, "species": "rat"})
    context["Session"].insert1({"mouse_id": 1, "session": 1})
    assert len(lab["Session"] * context["Mouse"].proj()) == 1
    with pytest.raises(djfs.DjfsError, match="does not exist"):
        djfs.VirtualModule("nothing", "djfs_no_such_schema")

"""The compact history row of the SQLite store gives back exactly what was written:
the number SQLite computes from a mantissa and scale is the very float, and an instance
kept as a template rebuilds to the same JSON bytes."""

from __future__ import annotations

import sqlite3
import struct

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.model.history import from_us, numeric
from broker.store import sqlhistory

#: from 1900 to 2200, in µs
times = st.integers(min_value=-2_208_988_800_000_000, max_value=7_258_118_400_000_000)
decimals = st.builds(
    lambda m, k: float(f"{m}e-{k}"),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.integers(min_value=0, max_value=12),
)
numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False), decimals)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def stored_num(conn: sqlite3.Connection, nv: float | int | None, sc: int | None) -> float:
    """``num`` as the history table's virtual column computes it."""
    conn.execute("DELETE FROM history")
    conn.execute(
        "INSERT INTO history(sid, at, hid, nv, sc, cd, doc) VALUES (1, 0, 1, ?, ?, 0, 0)",
        (nv, sc),
    )
    num: float = conn.execute("SELECT num FROM history").fetchone()[0]
    return num


def history_table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(sqlhistory.history_table("history"))
    return conn


@settings(max_examples=400)
@given(numbers)
def test_sqlite_gives_back_the_very_float_from_its_mantissa(x: float) -> None:
    conn = history_table()
    nv, sc = sqlhistory.mantissa(x)
    got = stored_num(conn, nv, sc)
    # SQLite keeps no negative zero (as the REAL column before it): equal, sign aside
    assert bits(got) == bits(x) if x != 0 else got == 0
    if sc is not None:
        assert isinstance(nv, int)
        assert 0 <= sc <= 9


def test_readings_with_few_decimals_keep_a_small_integer() -> None:
    assert sqlhistory.mantissa(23.45) == (2345, 2)
    assert sqlhistory.mantissa(-0.5) == (-5, 1)
    assert sqlhistory.mantissa(30.0) == (30, 0)
    # what has no short decimal form, or would lose the sign of zero, stays a float
    assert sqlhistory.mantissa(0.1 + 0.2) == (0.1 + 0.2, None)
    assert sqlhistory.mantissa(-0.0)[1] is None
    assert sqlhistory.mantissa(1e300) == (1e300, None)


values = st.one_of(
    numbers,
    st.integers(min_value=-(2**60), max_value=2**60),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)


@settings(max_examples=400)
@given(
    value=values,
    at=times,
    observed=st.one_of(
        st.none(),
        st.just("canonical"),
        st.sampled_from(["2026-12-01T09:00:00+09:00", "2026-12-01T00:00:00.000Z"]),
    ),
    kind=st.sampled_from(["Property", "Relationship"]),
    unit=st.booleans(),
    order=st.booleans(),
)
def test_an_instance_reads_back_as_the_same_json(
    value: object, at: int, observed: str | None, kind: str, unit: bool, order: bool
) -> None:
    """Whatever ``doc`` keeps (a template or the JSON), the instance read back is
    byte-for-byte the one written, members in the same order."""
    inst: dict[str, object] = (
        {"value": value, "type": kind} if order else {"type": kind, "value": value}
    )
    if observed is not None:
        inst["observedAt"] = from_us(at) if observed == "canonical" else observed
    if unit:
        inst["unitCode"] = "CEL"
    written = orjson.dumps(inst)
    num = numeric(value)
    doc = sqlhistory._encoded(inst, num, at, written)
    conn = history_table()
    nv, sc = sqlhistory.mantissa(num)
    conn.execute(
        "INSERT INTO history(sid, at, hid, nv, sc, cd, doc) VALUES (1, ?, 1, ?, ?, 0, ?)",
        (at, nv, sc, doc),
    )
    stored_doc, stored = conn.execute("SELECT doc, num FROM history").fetchone()
    assert orjson.dumps(sqlhistory.instance_of(stored_doc, stored, at)) == written
    if num is not None and num != 0:
        assert bits(stored) == bits(num)


def test_a_plain_reading_is_kept_as_a_template() -> None:
    at = 1_764_547_200_000_000
    for value, code in ((23.45, 0), (23, 1), (True, 2)):
        inst = {"type": "Property", "value": value, "observedAt": from_us(at)}
        assert sqlhistory._encoded(inst, numeric(value), at, orjson.dumps(inst)) == code
    inst = {"type": "Property", "value": 7}
    assert sqlhistory._encoded(inst, 7.0, at, orjson.dumps(inst)) == 4
    # an integer too large for a float's 53 bits keeps its JSON
    big = {"type": "Property", "value": 2**60 + 1}
    written = orjson.dumps(big)
    assert sqlhistory._encoded(big, numeric(2**60 + 1), at, written) == written

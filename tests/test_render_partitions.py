"""A large render runs in key partitions (``SYNCLINE_RENDER_PARTITION_ROWS``), and gives the same payloads.

At 10M rows, one pass of the payload render spilled its cursor join and repeated-key search and held
DuckDB at its memory limit (478 MB peak RSS); in partitions of 1M keys it did not (docs/performance.md).
These tests make the partitions small (50 rows) so a few hundred rows run in many of them, and check that
what comes out is row for row what one pass renders: duplicates (the newest row wins, ties share a key),
NULL keys, rejects, carried cursors, a model that aggregates over every source row, and the cases that
stay in one pass (a fan-out carried by ``_source_key``, keys repeated with different cursors, an
endpoint rule that compares rows). Then a partitioned run is delivered to the sandbox over HTTP, and a
rerun sends only the new rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from connectors.ledger import open_ledger
from connectors.runner import SyncPipeline, run_sync
from connectors.spec import load_sync_file
from pipelines.sample_data import grademypage as grademypage_sample

REPO = Path(__file__).resolve().parent.parent

PARTITION_ROWS = "50"
ROWS = 400
TS = "TIMESTAMPTZ '2026-06-01 00:00:00+00'"
EVENTS = [
    # 400 keys; 20 of them twice with the same cursor (a tie); 5 rows without a key; 10 without an event name.
    # 425 rows: in partitions of 50 rows, 9 of them.
    f"""CREATE TABLE analytics.events AS
        SELECT 'e' || i AS event_id, 'u' || (i % 37) AS user_id,
               CASE WHEN i % 40 = 7 THEN NULL ELSE 'Signed up' END AS event_name,
               {TS} + i * INTERVAL 1 MINUTE AS occurred_at
        FROM range({ROWS}) t(i)""",
    f"INSERT INTO analytics.events SELECT 'e' || i, 'u0', 'Tied', {TS} + i * INTERVAL 1 MINUTE FROM range(100, 120) t(i)",
    f"INSERT INTO analytics.events SELECT NULL, 'u' || i, 'No key', {TS} FROM range(5) t(i)",
]
# The same key again with a newer cursor: the carry then takes two passes and the render stays in one.
NEWER = f"INSERT INTO analytics.events SELECT 'e' || i, 'u1', 'Upgraded', {TS} + INTERVAL 2 DAY FROM range(30) t(i)"
SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
"""
MODELS = {
    "carried": "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source",
    "own_cursor": "SELECT _key, occurred_at AS _cursor, user_id, event_name AS event, occurred_at AS timestamp FROM source",
    # A window over every source row: the model must still see all of them, not one partition's.
    "aggregating": """SELECT _key, user_id, event_name AS event, occurred_at AS timestamp,
                             json_object('rows_in_source', count(*) OVER (), 'user_rows', count(*) OVER (PARTITION BY user_id))
                               AS properties
                      FROM source""",
    "fan_out": """SELECT s._key || ':' || k.kind AS _key, s._key AS _source_key, s.user_id,
                         s.event_name || ' ' || k.kind AS event, s.occurred_at AS timestamp
                  FROM source AS s CROSS JOIN (VALUES ('viewed'), ('clicked')) AS k(kind)""",
}


def _render(spec: Any) -> tuple[int | None, bool, list[tuple[Any, ...]]]:
    """(part files, None for one payload file; whether the materialized model rows are left; the rows)."""
    with SyncPipeline(spec, None) as pipeline:
        path = pipeline.render()
        parts = len(list(path.glob("*.parquet"))) if path.is_dir() else None
        left = (path.parent / "model.parquet").exists()
        table = pq.read_table(path)
    rows = [tuple(row.values()) for row in table.to_pylist()]
    return parts, left, sorted(rows, key=repr)


@pytest.mark.parametrize(("model", "newer", "partitioned"), [
    ("carried", False, True),
    ("own_cursor", False, True),
    ("aggregating", False, True),
    ("own_cursor", True, True),  # the model selects _cursor: no carry, so repeated cursors do not matter
    ("carried", True, False),  # two passes: one render
    ("fan_out", False, False),  # carried by _source_key: one render
])
def test_a_render_in_key_partitions_gives_the_payloads_of_one_pass(warehouse, write_sync, monkeypatch,
                                                                    model, newer, partitioned):
    warehouse(*EVENTS, *([NEWER] if newer else []))
    spec = write_sync(f"parts_{model}", SYNC, MODELS[model])
    one_file, _, one_pass = _render(spec)
    monkeypatch.setenv("SYNCLINE_RENDER_PARTITION_ROWS", PARTITION_ROWS)
    parts, left, in_parts = _render(spec)

    assert one_file is None
    source_rows = 425 + (30 if newer else 0)
    assert parts == (-(-source_rows // 50) if partitioned else None)
    assert not left  # the materialized model rows are removed after the render
    assert in_parts == one_pass
    reasons = [r[-1] for r in in_parts if r[-1]]
    assert sum("the source key is NULL" in r for r in reasons) == 5 * (2 if model == "fan_out" else 1)
    assert sum("event is required" in r for r in reasons) >= 10
    if model == "aggregating":
        assert all('"rows_in_source":425' in r[4] for r in in_parts if r[-1] is None)
    if not newer:  # the 20 tied keys: each rendered twice, with one idempotency key, to be sent once
        assert sum(1 for r in in_parts if r[6]) == 40 * (2 if model == "fan_out" else 1)


def test_an_endpoint_rule_that_compares_rows_keeps_the_render_in_one_pass(sample_warehouse, monkeypatch):
    """GradeMyPage rejects a page view whose dedup tuple another key already has (a window over every
    row): split by key, the two rows of such a tuple could land in different partitions and both pass."""
    sample_warehouse(grademypage_sample)
    spec = load_sync_file(REPO / "pipelines/syncs/page_views_to_grademypage.yaml")
    assert spec.endpoint.rules_span_rows
    monkeypatch.setenv("SYNCLINE_RENDER_PARTITION_ROWS", PARTITION_ROWS)
    parts, _, rows = _render(spec)
    assert parts is None  # one payload file
    reasons = {r[0]: r[-1] for r in rows if r[-1]}
    assert "pv_000077" in reasons  # the planted repeat of another view's dedup tuple


def test_a_partitioned_run_delivers_every_item_once_and_a_rerun_sends_only_new_rows(sandbox, warehouse, write_sync,
                                                                                     monkeypatch):
    monkeypatch.setenv("SYNCLINE_RENDER_PARTITION_ROWS", PARTITION_ROWS)
    warehouse(*EVENTS)
    spec = write_sync("parts_run", SYNC, MODELS["carried"])

    first = run_sync(spec)
    # 400 keys: 10 rejected (no event name), 390 delivered; the 20 ties are sent once; 5 rows have no key.
    assert (first.delivered, first.rejected) == (390, 15)
    assert len(sandbox.records("trubrics", "publish_events")) == 390

    warehouse(f"INSERT INTO analytics.events SELECT 'n' || i, 'u2', 'Later', {TS} FROM range(120) t(i)")
    ledger = open_ledger()
    try:
        with SyncPipeline(spec, None) as pipeline:
            again = pipeline.deliver(ledger=ledger)
            # Left out before rendering (the anti-join with the ledger, in partitions of the idempotency
            # key): the 390 delivered keys. Rendered: the 120 new rows, the 10 rejected before, the 5 keyless.
            assert pipeline.counts.rendered == 135
    finally:
        ledger.close()
    assert (again.delivered, again.rejected) == (120, 15)
    assert len(sandbox.records("trubrics", "publish_events")) == 510
    assert run_sync(spec).delivered == 0


def test_the_rerun_anti_join_reads_only_plain_keys_as_numbers():
    """The rerun's anti-join compares keys as 128-bit numbers (``_key_number``). A plain key becomes the
    number its 32 hex digits spell; anything else a ledger holds becomes NULL and matches nothing, as its
    text matched nothing: the cast alone reads upper case and ``_`` separators, which would make two
    different texts one number."""
    import duckdb

    from connectors.stage import _key_number

    plain = "1e27c6ec20a5142940f6828a9a0319a6"
    texts = [plain, "0" * 32, plain.upper(), plain[:8] + "_" + plain[9:], "dup-" + plain[:28], "nokey-" + plain[:26],
             plain[:31], plain + "0", " " + plain[1:], plain[:31] + "g", "é" + plain[1:]]
    con = duckdb.connect()
    got = dict(con.execute(f"SELECT t, {_key_number('t', checked=True)} FROM unnest(?) AS u(t)", [texts]).fetchall())
    assert got == {plain: int(plain, 16), "0" * 32: 0, **{t: None for t in texts[2:]}}
    # The model side casts unchecked: every key the engine makes for a source key is a plain key.
    from connectors.stage import builder_for

    spec = load_sync_file(REPO / "pipelines" / "syncs" / "product_events_to_trubrics.yaml")
    made = builder_for(spec).key_hash("k")
    rows = con.execute(f"SELECT {made}, {_key_number(made)}, {_key_number(made, checked=True)} "
                       "FROM (VALUES ('evt_1'), ('ü 2'), ('')) AS v(k)").fetchall()
    assert all(number == checked == int(text, 16) for text, number, checked in rows)

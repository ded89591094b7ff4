"""The Python API (``from connectors import deliver``) without Dagster, over real HTTP to the sandbox: every
input kind (DataFrame, Arrow table, RecordBatchReader, DuckDB relation, Parquet glob and file list), hostile
rows rejected with reasons naming the field, reruns that send nothing, windows that stay exactly-once when
they overlap, a Postgres ledger, and options checked with the sync file's own messages."""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import deliver
from connectors.errors import ConfigError, SynclineError
from connectors.ledger import open_ledger
from connectors.sandbox import Fault
from tests.conftest import FAST_DELIVERY

VALID_USERS = {"u0", "u1", "u3", "u4", "u6", "u7", "u9"}


def hostile_events() -> pd.DataFrame:
    """Ten events over three UTC days (2026-06-01..03), three of them unusable, one with a NaN inside."""
    df = pd.DataFrame({
        "event_id": [f"e{i:02d}" for i in range(10)],
        "user_id": [f"u{i}" for i in range(10)],
        "event": ["Signed up"] * 10,
        "timestamp": pd.date_range("2026-06-01 01:00", periods=10, freq="7h", tz="UTC"),
        "properties": [{"plan": "team", "amount": float(i)} for i in range(10)],
        "country": ["FR"] * 10,  # not a field: left out (and said so)
    })
    df.loc[2, "user_id"] = None  # missing user
    df.loc[5, "event"] = "   "  # blank event (strict: the connector's opt-in rule rejects it)
    df.at[7, "properties"] = {"plan": "free", "amount": math.nan}  # a choice: pandas' NaN means missing
    df.loc[8, "timestamp"] = pd.NaT  # no timestamp
    return df


def _send(data, name="events_out", **kwargs):
    options = {"vendor": "trubrics", "endpoint": "publish_events", "key": "event_id", "name": name,
               "delivery": FAST_DELIVERY, **kwargs}
    return deliver(data, **options)


def _received(sandbox) -> list[dict]:
    return sandbox.records("trubrics", "publish_events")


def _requests(sandbox) -> int:
    return int(sandbox.stats().get("trubrics", {}).get("publish_events", {}).get("requests", 0))


def test_a_dataframe_with_hostile_rows_delivers_the_valid_ones_and_explains_the_rest(sandbox):
    result = _send(hostile_events(), strict=True)

    assert result.ok and result.status == "success", result.summary()
    assert (result.input_kind, result.input_rows, result.extracted) == ("pandas", 10, 10)
    assert (result.delivered, result.rejected, result.skipped, result.pending) == (7, 3, 0, 0)
    received = _received(sandbox)
    assert {r["user_id"] for r in received} == VALID_USERS and len(received) == 7
    # A choice (docs/resources.md, "Data conversion"): NaN is pandas' missing-value marker, so a NaN inside
    # a dict of an object column is read as missing and the member omitted (never sent as NaN), where a real
    # NaN in Arrow data is rejected (below). Not silently: the run's notes count such values.
    nan_row = next(r for r in received if r["user_id"] == "u7")
    assert nan_row["properties"] == {"plan": "free"}
    nan_note = ("1 NaN value(s) inside objects or lists of the DataFrame (properties: 1) were read as missing, "
                "as pandas means NaN, and left out (sent as null with keep_nulls)")
    assert nan_note in result.notes[-1] and nan_note in (result.run.notes or "")
    assert all(r["timestamp"].endswith("+00:00") for r in received)

    reasons = {r.key: r.reason for r in result.rejects}
    assert set(reasons) == {"e02", "e05", "e08"}
    assert "user_id is required" in reasons["e02"]
    assert "event" in reasons["e05"] and "blank" in reasons["e05"]
    assert "timestamp is required" in reasons["e08"]
    assert result.ignored_columns == ["country"]
    assert result.rejects_command == "syncline rejects events_out --all"
    assert result.destination.startswith("trubrics-") and "127.0.0.1" in result.destination_identity
    assert result.ledger.endswith("ledger.sqlite")

    # The ledger and the run log know the name, as they know a sync file's.
    ledger = open_ledger()
    try:
        assert ledger.counts("events_out") == {"delivered": 7, "rejected": 3, "in_doubt": 0, "failed": 0}
        (run,) = ledger.runs("events_out")
        assert (run["status"], run["delivered"], run["span"]) == ("success", 7, "all")
        assert nan_note in run["notes"]  # `syncline log events_out` shows it
    finally:
        ledger.close()

    # A second run sends nothing: the delivered rows are skipped, the bad ones are rejected again.
    sent = _requests(sandbox)
    again = _send(hostile_events(), strict=True)
    assert again.ok and (again.delivered, again.skipped, again.rejected) == (0, 7, 3)
    assert _requests(sandbox) == sent and len(_received(sandbox)) == 7


def test_the_result_carries_the_generated_assets_metadata(sandbox):
    result = _send(hostile_events())
    metadata = result.metadata
    assert metadata["items_delivered"].value == result.delivered
    assert metadata["items_rejected"].value == result.rejected == 2  # no strict: a blank text is text
    assert {"events_per_s", "p95_latency_ms", "retries", "http_429", "bytes_sent", "destination", "ledger"} <= set(metadata)
    assert "user_id is required" in metadata["rejection_reasons"].value
    assert metadata["sync_name"].value == "events_out" and metadata["input_rows"].value == 10


def test_nan_inside_a_dataframes_objects_and_lists_is_counted_as_missing_and_none_is_not(sandbox):
    """The choice above, counted per column: NaN inside dicts and lists of object columns. A ``None`` there,
    and a top-level NaN (pandas' everyday missing value), are not in the note."""
    frame = hostile_events().drop(index=[2, 5, 8]).reset_index(drop=True)
    frame["properties"] = [{"plan": "a", "amount": math.nan if i < 2 else (None if i == 2 else 1.0)} for i in range(7)]
    frame["scores"] = [[1.0, math.nan], [], None, [math.nan, math.nan], [2.0], [None], [3.0]]
    frame["ratio"] = [math.nan] * 7  # top level: not counted
    model = ("SELECT _key, user_id, event, timestamp, {'scores': scores, 'amount': properties.amount, "
             "'ratio': ratio} AS properties FROM source")
    counted = _send(frame, name="nan_counted", model=model, keep_nulls=True)
    assert counted.delivered == 7
    assert any("5 NaN value(s) inside objects or lists of the DataFrame (properties: 2, scores: 3)" in n
               for n in counted.notes), counted.notes
    sent = {r["user_id"]: r["properties"] for r in _received(sandbox)}
    assert sent["u0"] == {"scores": [1.0, None], "amount": None, "ratio": None}  # keep_nulls: null, never NaN

    clean = frame.assign(properties=[{"plan": "a", "amount": None}] * 7, scores=[[1.0, None]] * 7)
    assert not any("NaN" in n for n in _send(clean, name="nan_none", model=model).notes)


def test_an_arrow_table_with_a_real_nan_inside_an_object_is_rejected_naming_the_field(sandbox):
    props = pa.array([{"plan": "a", "amount": 1.0}, {"plan": "b", "amount": math.nan}, {"plan": "c", "amount": math.inf}],
                     pa.struct([("plan", pa.string()), ("amount", pa.float64())]))
    stamps = pa.array([dt.datetime(2026, 6, 1, 9, tzinfo=dt.UTC)] * 3, pa.timestamp("us", tz="UTC"))
    table = pa.table({"event_id": ["a", "b", "c"], "user_id": ["u1", "u2", "u3"], "event": ["x"] * 3,
                      "timestamp": stamps, "properties": props})
    result = _send(table, name="arrow_out")
    assert result.input_kind == "arrow" and (result.delivered, result.rejected) == (1, 2)
    assert {r.key for r in result.rejects} == {"b", "c"}
    assert all("properties" in r.reason and "NaN" in r.reason for r in result.rejects)
    assert [r["user_id"] for r in _received(sandbox)] == ["u1"]


def test_a_record_batch_reader_is_streamed(sandbox):
    frame = hostile_events().drop(index=[2, 5, 8])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))
    result = _send(reader, name="stream_out")
    assert result.input_kind == "arrow stream" and result.ok
    assert (result.input_rows, result.delivered) == (7, 7)
    assert {r["user_id"] for r in _received(sandbox)} == VALID_USERS


def test_a_duckdb_relation_with_a_model(sandbox):
    con = duckdb.connect()
    relation = con.sql(
        "SELECT 'r' || i AS id, 'user_' || i AS who, CASE WHEN i = 3 THEN NULL ELSE 'Viewed' END AS what, "
        "TIMESTAMPTZ '2026-06-02 00:00:00+00' + i * INTERVAL 1 MINUTE AS ts FROM range(250) t(i)"
    )
    result = _send(relation, name="relation_out", key="id", cursor="ts",
                   model="SELECT _key, who AS user_id, what AS event, ts AS timestamp, {'n': 1} AS properties FROM source")
    assert result.input_kind == "duckdb relation"
    assert (result.delivered, result.rejected) == (249, 1) and result.rejects[0].key == "r3"
    assert result.run.requests == 3  # 100 a request
    assert len(_received(sandbox)) == 249
    con.close()


def test_a_parquet_glob_and_a_list_of_files(sandbox, tmp_path):
    frame = hostile_events().drop(index=[2, 5, 8]).reset_index(drop=True)
    folder = tmp_path / "landing"
    folder.mkdir()
    for part in range(3):  # pandas writes nanosecond timestamps: the default model casts them
        frame.iloc[part::3].to_parquet(folder / f"part-{part}.parquet", index=False)
    glob = _send(str(folder / "*.parquet"), name="glob_out")
    assert glob.input_kind == "parquet" and (glob.input_rows, glob.delivered) == (7, 7)

    files = _send([folder / "part-0.parquet", folder / "part-1.parquet"], name="files_out")
    assert (files.input_rows, files.delivered) == (len(frame.iloc[0::3]) + len(frame.iloc[1::3]), 5)
    assert len(_received(sandbox)) == 12
    assert (folder / "part-0.parquet").exists()  # read where they are, never moved or removed

    folder_input = _send(folder, name="glob_out")  # a folder means every Parquet file below it
    assert (folder_input.delivered, folder_input.skipped) == (0, 7)


def test_windows_select_rows_by_cursor_and_overlapping_windows_stay_exactly_once(sandbox):
    frame = hostile_events().drop(index=[2, 5, 8])  # 7 events: 06-01 x3, 06-02 x2, 06-03 x2
    day = _send(frame, name="windowed", cursor="timestamp", window=dt.date(2026, 6, 2))
    assert day.window == "2026-06-02" and (day.extracted, day.delivered) == (2, 2)
    assert day.outside_window == 5 and any("outside the window 2026-06-02" in n for n in day.notes)

    span = _send(frame, name="windowed", cursor="timestamp", window=(dt.date(2026, 6, 1), dt.date(2026, 6, 3)))
    assert span.window == "2026-06-01..2026-06-03"
    assert (span.extracted, span.delivered, span.skipped) == (7, 5, 2)
    received = _received(sandbox)
    assert len(received) == len({r["user_id"] for r in received}) == 7
    ledger = open_ledger()
    try:
        assert [r["span"] for r in ledger.runs("windowed")] == ["2026-06-01..2026-06-03", "2026-06-02"]
    finally:
        ledger.close()


def test_a_postgres_ledger_and_the_cli_reads_it(sandbox, postgres_ledger_url, monkeypatch, capsys):
    first = _send(hostile_events(), name="pg_out", ledger=postgres_ledger_url)
    assert first.ok and first.delivered == 8 and first.ledger.startswith("postgresql://")
    again = _send(hostile_events(), name="pg_out", ledger=postgres_ledger_url)
    assert (again.delivered, again.skipped) == (0, 8)
    assert len(_received(sandbox)) == 8

    from pipelines.cli import main

    monkeypatch.setenv("SYNCLINE_LEDGER_URL", postgres_ledger_url)
    assert main(["rejects", "pg_out"]) == 0
    out = capsys.readouterr().out
    assert "pg_out: 2 rejected row(s)" in out and "user_id" in out and "e02" in out


def test_options_are_checked_with_the_sync_files_messages(sandbox):
    with pytest.raises(ConfigError) as bad:
        _send(hostile_events(), delivery={"concurency": 4, "max_items": 500})
    text = str(bad.value)
    assert "deliver(name='events_out'): delivery.concurency: unknown field (did you mean concurrency?)" in text
    assert "delivery.max_items: trubrics.publish_events accepts at most 100 items per request" in text

    with pytest.raises(ConfigError, match="name: a lower_snake_case name"):
        _send(hostile_events(), name="Bad-Name")
    with pytest.raises(ConfigError, match=r"unknown endpoint 'publish' for trubrics \(known: publish_events"):
        deliver(hostile_events(), vendor="trubrics", endpoint="publish", key="event_id", name="x")
    with pytest.raises(ConfigError, match="mode: must be 'append' or 'mirror'"):
        _send(hostile_events(), mode="upsert")
    with pytest.raises(ConfigError, match="window: a window selects rows by their cursor"):
        _send(hostile_events(), window=dt.date(2026, 6, 1))
    with pytest.raises(ConfigError, match="key: column 'id' is not in the input"):
        _send(hostile_events(), key="id")
    with pytest.raises(ConfigError, match="no column of the input is a field of trubrics.publish_events"):
        _send(pd.DataFrame({"event_id": ["a"], "who": ["u"]}))
    with pytest.raises(ConfigError, match="evnt: not a field of trubrics.publish_events"):
        _send(hostile_events(), model="SELECT _key, event AS evnt FROM source")
    with pytest.raises(SynclineError, match="cannot deliver a dict"):
        _send({"event_id": ["a"]})
    assert _requests(sandbox) == 0


def test_a_partial_run_is_not_ok_and_lists_the_items_in_doubt(sandbox):
    sandbox.set_fault("trubrics", "publish_events", Fault("store_503", count=10))
    result = _send(hostile_events(), delivery={**FAST_DELIVERY, "in_doubt": "hold", "max_attempts": 1})
    assert result.status == "partial" and not result.ok
    assert result.in_doubt == 8 and result.pending == 8
    assert {i.state for i in result.in_doubt_items} == {"in_doubt"} and len(result.in_doubt_items) == 8
    with pytest.raises(SynclineError, match="partial"):
        result.raise_for_status()


def test_a_wrong_key_stops_the_run_naming_the_variable(sandbox):
    result = _send(hostile_events(), credentials={"api_key": "not-the-key"})
    assert result.status == "stopped" and not result.ok
    error = result.run.error or ""
    assert "HTTP 401" in error and "TRUBRICS" in error and "not-the-key" not in error
    assert result.delivered == 0 and _received(sandbox) == []


def test_the_dataframe_and_the_sync_file_send_the_same_payloads(sandbox, warehouse, write_sync):
    frame = hostile_events()
    con = duckdb.connect(str(warehouse()))
    con.register("frame", pa.Table.from_pandas(frame, preserve_index=False))
    # (a TIMESTAMPTZ_NS column would be refused by the engine: the warehouse holds microseconds)
    con.execute("CREATE TABLE analytics.events AS SELECT * REPLACE (CAST(timestamp AS TIMESTAMPTZ) AS timestamp) FROM frame")
    con.close()
    spec = write_sync("from_file", """
        source: {table: analytics.events, key: event_id, cursor: timestamp}
        destination: {vendor: trubrics, endpoint: publish_events}
    """, "SELECT _key, user_id, event, timestamp, properties FROM source")
    from connectors.runner import run_sync

    by_file = run_sync(spec)
    file_records = _received(sandbox)
    sandbox.reset()
    by_frame = _send(frame, name="from_frame", cursor="timestamp")
    assert (by_file.delivered, by_file.rejected) == (by_frame.delivered, by_frame.rejected) == (8, 2)
    assert sorted(file_records, key=str) == sorted(_received(sandbox), key=str)


def test_the_staged_input_is_removed_after_the_run(sandbox, syncline_home):
    _send(hostile_events())
    assert not list((syncline_home / "staging").rglob("*.parquet"))
    with pytest.raises(ConfigError):
        _send(hostile_events(), key="missing")
    assert not list((syncline_home / "staging").rglob("*.parquet"))


def test_pq_written_by_pyarrow_with_nanoseconds_is_read(sandbox, tmp_path):
    frame = hostile_events().drop(index=[2, 5, 8])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
    pq.write_table(table, tmp_path / "ns.parquet", coerce_timestamps=None)
    result = _send(str(tmp_path / "ns.parquet"), name="ns_out")
    assert result.delivered == 7


def test_any_arrow_stream_producer_is_accepted(sandbox):
    class Producer:  # what Polars and other Arrow libraries expose (the PyCapsule stream interface)
        def __init__(self, table: pa.Table) -> None:
            self.table = table

        def __arrow_c_stream__(self, requested_schema=None):
            return self.table.__arrow_c_stream__(requested_schema)

    frame = hostile_events().drop(index=[2, 5, 8])
    result = _send(Producer(pa.Table.from_pandas(frame, preserve_index=False)), name="producer_out")
    assert result.input_kind == "arrow stream" and result.delivered == 7


def test_an_epoch_millisecond_cursor_selects_its_window(sandbox):
    frame = hostile_events().drop(index=[2, 5, 8])  # 7 events: 06-01 x3, 06-02 x2, 06-03 x2
    frame["created_ms"] = frame["timestamp"].astype("int64") // 1_000_000
    day = _send(frame, name="epoch_window", cursor="created_ms", cursor_unit="ms", window=dt.date(2026, 6, 2))
    assert (day.extracted, day.delivered) == (2, 2), day.summary()
    with pytest.raises(ConfigError) as error:
        _send(frame, name="epoch_window_no_unit", cursor="created_ms", window=dt.date(2026, 6, 2))
    assert "cursor_unit" in str(error.value)


def test_a_user_model_over_nanosecond_timestamps_keeps_microseconds(sandbox, tmp_path):
    frame = hostile_events().drop(index=[2, 5, 8])
    frame["timestamp"] = frame["timestamp"] + pd.Timedelta(microseconds=123_456)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "ns.parquet", coerce_timestamps=None)
    model = "SELECT _key, user_id, event, timestamp, properties FROM source"  # the column stays TIMESTAMPTZ_NS
    result = _send(str(tmp_path / "ns.parquet"), name="ns_model", model=model)
    assert result.delivered == 7, result.summary()
    assert all(r["timestamp"].endswith(".123456+00:00") for r in _received(sandbox))

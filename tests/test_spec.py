"""Sync files: every problem reported at once (file + field path), cron checked on load, broken files never
stop the code location, relative paths taken from the sync file's folder, and the model check."""

from __future__ import annotations

import logging
import textwrap

import duckdb
import pytest

from connectors.check import check_model
from connectors.errors import ConfigError
from connectors.spec import SyncFileError, load_sync_file, load_syncs
from pipelines.cli import main

GOOD = """
    name: {name}
    source: {{table: analytics.events, key: event_id, cursor: occurred_at}}
    destination: {{vendor: trubrics, endpoint: publish_events}}
    model: {name}.sql
    partitions: {{daily: {{start: 2026-06-01}}}}
    schedule: "{schedule}"
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source\n"
EVENTS = """
    CREATE TABLE analytics.events AS SELECT * FROM (VALUES
        ('e1', 'u1', 'Signed up', TIMESTAMPTZ '2026-06-01 10:00:00+00'),
        ('e2', 'u2', 'Signed up', TIMESTAMPTZ '2026-06-02 10:00:00+00')
    ) t(event_id, user_id, event_name, occurred_at)
"""


def write(folder, name: str, body: str, sql: str | None = SQL):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(body).strip() + "\n")
    if sql is not None:
        (folder / f"{name}.sql").write_text(sql)
    return folder / f"{name}.yaml"


def test_every_problem_of_a_file_is_reported_at_once_with_its_field_path(tmp_path):
    path = write(tmp_path, "bad", """
        name: Bad-Name
        source: {table: analytics.events, key: [], cursor: 3}
        destination: {vendor: trubrics, endpoint: publish_events}
        model: bad.sql
        mode: upsert
        partitions: {daily: {start: 2026-13-01}}
        schedule: "99 * * * *"
        delivery: {concurency: 4, max_items: 500, timeout: -1, concurrency: 1000, breaker_failures: 0, deadline: fast}
        checks: {max_rejected_share: 2}
        sourse: 2
    """)
    with pytest.raises(ConfigError) as caught:
        load_sync_file(path)
    error = caught.value
    assert isinstance(error, SyncFileError)
    lines = str(error).splitlines()
    assert len(lines) == len(error.problems) >= 13
    assert all(line.startswith(f"{path}: ") for line in lines)
    fields = [p.field for p in error.problems]
    for expected in ("name", "source.key", "source.cursor", "mode", "partitions.daily.start", "schedule",
                     "delivery.concurency", "delivery.max_items", "delivery.timeout", "delivery.concurrency",
                     "delivery.breaker_failures", "delivery.deadline", "checks.max_rejected_share", "sourse"):
        assert expected in fields, (expected, lines)
    by_field = {p.field: p.message for p in error.problems}
    assert by_field["delivery.concurency"].startswith("unknown field (did you mean concurrency?)")
    assert by_field["sourse"].startswith("unknown field (did you mean source?)")
    assert "publish_events accepts at most 100 items" in by_field["delivery.max_items"]
    assert "at most 256 requests in flight" in by_field["delivery.concurrency"]
    assert "99 * * * *" in by_field["schedule"]
    assert "(line 8)" in by_field["delivery.timeout"]  # where to look
    assert (error.field, error.file) == ("name", str(path))  # the first problem, for one-problem callers


def test_yaml_errors_keep_line_and_column(tmp_path):
    path = write(tmp_path, "broken", "name: broken\nsource: {table: [a\n")
    with pytest.raises(ConfigError) as caught:
        load_sync_file(path)
    assert caught.value.field == "(yaml)"
    assert "not valid YAML at line 3, column 1" in caught.value.message


def test_a_field_given_twice_is_reported(tmp_path):
    path = write(tmp_path, "twice", textwrap.dedent(GOOD.format(name="twice", schedule="5 * * * *")) + "mode: append\nmode: mirror\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: mode: given twice \(again at line 8\)"):
        load_sync_file(path)


def test_a_bad_cron_is_a_config_error_for_that_sync_only(tmp_path):
    write(tmp_path, "good", GOOD.format(name="good", schedule="15 * * * *"))
    write(tmp_path, "badcron", GOOD.format(name="badcron", schedule="99 * * * *"))
    write(tmp_path, "fourfields", GOOD.format(name="fourfields", schedule="* * * *"))
    loaded = load_syncs([tmp_path])
    assert list(loaded.syncs) == ["good"] and loaded.syncs["good"].schedule == "15 * * * *"
    errors = {e.file.rsplit("/", 1)[-1]: e for e in loaded.errors}
    assert set(errors) == {"badcron.yaml", "fourfields.yaml"}
    assert errors["badcron.yaml"].field == "schedule" and "not a valid cron string '99 * * * *'" in errors["badcron.yaml"].message
    assert "five-field cron string" in errors["fourfields.yaml"].message


def test_definitions_load_with_one_bad_and_one_good_sync_file(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "syncs"
    write(folder, "good_one", GOOD.format(name="good_one", schedule="15 * * * *"))
    write(folder, "bad_one", GOOD.format(name="bad_one", schedule="99 * * * *").replace("trubrics", "nobody"))
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(folder))
    from pipelines.definitions import build_definitions

    with caplog.at_level(logging.WARNING, logger="syncline"):
        defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "good_one/delivered" in keys and not any(k.startswith("bad_one/") for k in keys)
    skipped = [r.getMessage() for r in caplog.records if "skipped a sync file" in r.getMessage()]
    assert any("bad_one.yaml: schedule:" in m for m in skipped)
    assert any("bad_one.yaml: destination.vendor: unknown vendor 'nobody'" in m for m in skipped)
    schedules = [s.name for s in defs.schedules or []]  # type: ignore[union-attr]
    assert any("good_one" in name for name in schedules) and not any("bad_one" in name for name in schedules)


def test_the_packaged_sync_files_load(syncline_home):
    from connectors import settings

    loaded = load_syncs([settings.PACKAGE_SYNCS_DIR])
    assert loaded.errors == [] and len(loaded.syncs) >= 8


def test_new_fields_have_defaults_and_are_checked(tmp_path):
    spec = load_sync_file(write(tmp_path, "d", GOOD.format(name="d", schedule="0 0 * * *")))
    assert (spec.delivery.breaker_failures, spec.delivery.deadline) == (5, 21600.0)
    assert spec.source.null_cursor == "exclude" and spec.delivery.in_doubt == "resend"
    tuned = load_sync_file(write(tmp_path, "t", textwrap.dedent(GOOD.format(name="t", schedule="0 0 * * *")) +
                                 "delivery: {breaker_failures: 2, deadline: 60, backoff_base: 1}\n"))
    assert (tuned.delivery.breaker_failures, tuned.delivery.deadline, tuned.delivery.backoff_base) == (2, 60.0, 1.0)
    bad = GOOD.format(name="n", schedule="0 0 * * *").replace("cursor: occurred_at", "cursor: occurred_at, null_cursor: all")
    with pytest.raises(ConfigError, match=r"source.null_cursor: must be 'exclude' or 'include', got 'all'"):
        load_sync_file(write(tmp_path, "n", bad))


# --- relative paths ------------------------------------------------------------------------------------
PARQUET_SYNC = """
    name: landed
    source: {{parquet: "{glob}", key: id, cursor: ts}}
    destination: {{vendor: trubrics, endpoint: publish_events}}
    model: landed.sql
    delivery: {{backoff_base: 0.01, backoff_cap: 0.05}}
"""
PARQUET_SQL = "SELECT _key, user_id, 'Ping' AS event, ts AS timestamp FROM source\n"


def _landing(folder, rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 'r' || i AS id, 'u' || i AS user_id, TIMESTAMPTZ '2026-06-02 08:00:00+00' + i * INTERVAL 1 MINUTE AS ts "
        f"FROM range({rows}) t(i)) TO '{folder / 'a.parquet'}' (FORMAT parquet)"
    )
    con.close()


def test_a_relative_parquet_glob_is_taken_from_the_sync_files_folder_whatever_the_cwd(sandbox, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    write(project / "syncs", "landed", PARQUET_SYNC.format(glob="../landing/*.parquet"), PARQUET_SQL)
    _landing(project / "landing", 5)
    elsewhere = tmp_path / "elsewhere"
    _landing(elsewhere / "landing", 50)  # what a cwd-relative reading would find instead
    (elsewhere / "syncs").mkdir()
    monkeypatch.chdir(elsewhere / "syncs")
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(project / "syncs"))

    assert main(["run", "landed"]) == 0
    assert len(sandbox.records("trubrics", "publish_events")) == 5


def test_syncline_home_in_a_path_names_the_state_folder(sandbox, tmp_path, syncline_home, monkeypatch):
    _landing(syncline_home / "landing", 3)
    path = write(tmp_path / "syncs", "landed", PARQUET_SYNC.format(glob="${SYNCLINE_HOME}/landing/*.parquet"), PARQUET_SQL)
    monkeypatch.chdir(tmp_path)
    from connectors.runner import run_sync

    assert run_sync(load_sync_file(path)).delivered == 3


def test_a_relative_files_root_is_taken_from_the_sync_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "syncs"
    path = write(folder, "fb", """
        name: fb
        source: {table: analytics.feedback, key: feedback_id}
        destination: {vendor: streamback, endpoint: feedback, options: {files_root: screens}}
        model: fb.sql
    """, "SELECT _key, 'bug' AS type, 'broken' AS message FROM source\n")
    monkeypatch.chdir(tmp_path)
    spec = load_sync_file(path.relative_to(tmp_path))
    assert spec.endpoint.root() == (folder / "screens").resolve()  # type: ignore[attr-defined]
    monkeypatch.chdir("/")
    assert spec.endpoint.root() == (folder / "screens").resolve()  # type: ignore[attr-defined]


# --- the model check -----------------------------------------------------------------------------------
def _spec(tmp_path, sql: str, name: str = "chk"):
    return load_sync_file(write(tmp_path / "syncs", name, GOOD.format(name=name, schedule="15 * * * *"), sql))


def test_check_model_passes_a_model_that_binds(warehouse, tmp_path):
    warehouse(EVENTS)
    assert check_model(_spec(tmp_path, SQL)) is None


def test_check_model_names_the_missing_column_and_the_candidates(warehouse, tmp_path):
    warehouse(EVENTS)
    problem = check_model(_spec(tmp_path, "SELECT _key, user_id, evnt AS event, occurred_at AS timestamp FROM source"))
    assert problem is not None and "\n" not in problem
    assert 'Referenced column "evnt" not found' in problem and "Candidate bindings" in problem and "event_name" in problem


def test_check_model_reports_fields_the_endpoint_does_not_have_and_sql_errors(warehouse, tmp_path):
    warehouse(EVENTS)
    problem = check_model(_spec(tmp_path, "SELECT _key, user_id, event_name AS evnt, occurred_at AS timestamp FROM source"))
    assert problem is not None and problem.startswith("evnt: not a field of trubrics.publish_events")
    problem = check_model(_spec(tmp_path, "SELEC _key FROM source", name="syntax"))
    assert problem is not None and problem.startswith("Parser Error") and "\n" not in problem
    problem = check_model(_spec(tmp_path, "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM nowhere",
                                name="table"))
    assert problem is not None and "nowhere" in problem


def test_check_model_reads_no_rows_and_needs_no_ledger(warehouse, tmp_path, syncline_home):
    warehouse(EVENTS)
    # Binds only: a model that would fail on any row (a cast of text to a number) still passes the check.
    spec = _spec(tmp_path, "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, "
                           "{'n': CAST(user_id AS INTEGER)} AS properties FROM source")
    assert check_model(spec) is None
    assert not (syncline_home / "ledger.sqlite").exists()
    assert not (syncline_home / "staging").exists() or not list((syncline_home / "staging").rglob("*.parquet"))


def test_check_model_on_a_parquet_source_and_a_missing_warehouse(tmp_path, syncline_home):
    _landing(tmp_path / "syncs" / "landing", 2)
    spec = load_sync_file(write(tmp_path / "syncs", "landed", PARQUET_SYNC.format(glob="landing/*.parquet"), PARQUET_SQL))
    assert check_model(spec) is None
    bad = load_sync_file(write(tmp_path / "syncs", "landed2", PARQUET_SYNC.format(glob="landing/*.parquet").replace(
        "landed", "landed2"), "SELECT _key, usr AS user_id, 'Ping' AS event, ts AS timestamp FROM source"))
    problem = check_model(bad)
    assert problem is not None and '"usr"' in problem and "user_id" in problem
    assert check_model(_spec(tmp_path, SQL)) == f"warehouse not found at {syncline_home / 'warehouse.duckdb'}"


def test_check_model_on_a_postgres_source(write_sync, monkeypatch):
    import uuid

    import psycopg

    from tests.test_ledger import PG_URL

    table = f"public.check_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"CREATE TABLE {table} (event_id text, user_id text, event_name text, occurred_at timestamptz)")
    try:
        monkeypatch.setenv("SYNCLINE_WAREHOUSE_URL", PG_URL)
        yaml_body = f"""
            source: {{table: {table}, key: event_id, cursor: occurred_at, warehouse: postgres}}
            destination: {{vendor: trubrics, endpoint: publish_events}}
        """
        assert check_model(write_sync("pg_ok", yaml_body, SQL)) is None
        problem = check_model(write_sync("pg_bad", yaml_body, SQL.replace("event_name", "evt_name")))
        assert problem is not None and '"evt_name"' in problem and "event_name" in problem
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"DROP TABLE {table}")

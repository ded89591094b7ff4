"""How close syncline runs to Flux's documented 10 batch requests/minute per key without a single 429.

    .venv/bin/python benchmarks/bench_flux_rate.py                 # ~95 s: 15 batches of 500 + a 3-event tail
    .venv/bin/python benchmarks/bench_flux_rate.py --batches 12    # ~75 s

A sync of ``batches * 500 + 3`` synthetic usage events goes to an in-process :class:`Sandbox` whose Flux
emulator enforces 10 batch requests per sliding 60 s per key (and, an assumption: the document gives no
figure, syncline's own 60/min on the single endpoint), answering
429 beyond. Reported, as measured *at the sandbox*: batch requests/minute between the first and the last
batch request (target >= 9.5 of 10), 429s (target 0), the most batch requests seen in any 60 s window
(must stay <= 10), the largest batch (<= 500), and where the 3-event tail went (the single endpoint).
Bounded: it aborts after 150 s whatever happens. Exit status 1 when a target is missed.

Why 9.5: the limiter spaces requests at 95% of the documented rate (one every 6.32 s) because the document
does not say how Flux counts its minute; 9.5/min is therefore the ceiling, and the measurement sits on it
up to scheduling noise (a few milliseconds over ~90 s, i.e. the third decimal), hence a 0.005 tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import time_bound  # noqa: E402

DOCUMENTED_PER_MINUTE = 10
TARGET_PER_MINUTE = 9.5
TOLERANCE = 0.005
TAIL = 3
TIME_BOUND_S = 150


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=15, help="full batches of 500 to send (12..20)")
    args = parser.parse_args()
    batches = min(max(args.batches, 12), 20)
    time_bound(TIME_BOUND_S)

    home = Path(tempfile.mkdtemp(prefix="syncline-bench-flux-"))
    os.environ["SYNCLINE_HOME"] = str(home)

    import duckdb

    from connectors.ledger import open_ledger
    from connectors.runner import run_sync
    from connectors.sandbox import Sandbox
    from connectors.spec import load_sync_file

    events = batches * 500 + TAIL
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA analytics")
    con.execute(
        f"""CREATE TABLE analytics.bench_usage AS
        SELECT 'use_' || i AS usage_id, 'acct_' || (i % 500) AS account_id,
               (['api.requests', 'storage.gb_hours', 'compute.minutes'])[1 + i % 3] AS meter,
               round((i % 1000) / 10.0, 1) AS quantity,
               (['free', 'team', 'enterprise'])[1 + i % 3] AS plan,
               TIMESTAMPTZ '2026-06-01 00:00:00+00' + (i % 604800) * INTERVAL 1 SECOND AS occurred_at
        FROM range({events}) t(i)"""
    )
    con.close()
    folder = home / "syncs"
    folder.mkdir()
    (folder / "bench.sql").write_text(
        "SELECT _key, _cursor, meter AS name, occurred_at AS timestamp, account_id AS user_id, quantity AS value, "
        "{'account_id': account_id} AS properties, {'plan': plan} AS tags FROM source"
    )
    (folder / "bench.yaml").write_text(
        "name: bench_flux\nsource: {table: analytics.bench_usage, key: usage_id, cursor: occurred_at}\n"
        "destination: {vendor: flux, endpoint: events_batch}\nmodel: bench.sql\n"
    )
    spec = load_sync_file(folder / "bench.yaml")

    with Sandbox(record_items=False) as sandbox:
        os.environ.update(sandbox.env())
        # Assumption: the single endpoint's "standard" limit has no figure; hold it to syncline's 60/min guess.
        sandbox.emulator("flux").control("single_rate", {"per_minute": 60})
        ledger = open_ledger()
        started = time.perf_counter()
        run = run_sync(spec, ledger=ledger)
        elapsed = time.perf_counter() - started
        ledger.close()
        flux = sandbox.stats()["flux"]
        stored = len(sandbox.emulator("flux").control("events", {}))
    batch = flux["events_batch"]
    single = flux.get("events", {"requests": 0, "by_status": {}, "rate_limited": 0})

    span = batch["last_at"] - batch["first_at"]
    per_minute = (batch["requests"] - 1) * 60.0 / span if span > 0 else 0.0
    http_429 = batch["by_status"].get(429, 0) + single["by_status"].get(429, 0)
    report = {
        "events": events,
        "delivered": run.delivered,
        "stored_at_sandbox": stored,
        "batch_requests_at_sandbox": batch["requests"],
        "achieved_batch_requests_per_minute": round(per_minute, 3),
        "target_batch_requests_per_minute": f">= {TARGET_PER_MINUTE:g} of {DOCUMENTED_PER_MINUTE}",
        "max_batch_requests_in_any_60s_window": batch["max_in_window"],
        "http_429": http_429,
        "rate_limited_by_sandbox": batch["rate_limited"] + single["rate_limited"],
        "max_items_per_request": batch["max_items_per_request"],
        "tail_single_requests": single["requests"],
        "events_per_second": round(run.delivered / elapsed, 1),
        "batch_span_seconds": round(span, 2),
        "run_seconds_incl_extract_transform": round(elapsed, 2),
    }
    print(json.dumps(report, indent=2))
    failures = []
    if per_minute < TARGET_PER_MINUTE - TOLERANCE:
        failures.append(f"achieved {per_minute:.3f} batch requests/min, under the {TARGET_PER_MINUTE:g} target")
    if http_429 or run.http_429:
        failures.append(f"{max(http_429, run.http_429)} responses were 429")
    if batch["max_in_window"] > DOCUMENTED_PER_MINUTE:
        failures.append(f"{batch['max_in_window']} batch requests in one 60 s window, over {DOCUMENTED_PER_MINUTE}")
    if batch["max_items_per_request"] > 500:
        failures.append(f"{batch['max_items_per_request']} events in one request, over 500")
    if run.delivered != events or stored != events:
        failures.append(f"delivered {run.delivered} / stored {stored} of {events} events")
    if single["requests"] != TAIL:
        failures.append(f"the {TAIL}-event tail took {single['requests']} single requests")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

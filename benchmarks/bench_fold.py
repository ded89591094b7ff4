"""The ledger's fold on its own: CPU per item of folding a delivery journal into ``syncline_items``.

    .venv/bin/python benchmarks/bench_fold.py --items 300000
    .venv/bin/python benchmarks/bench_fold.py --items 300000 --per-item
    .venv/bin/python benchmarks/bench_fold.py --items 300000 --postgres

Why on its own: a 300k-event `syncline run` against the local sink spends most of its CPU on the ledger
writer thread (measured 2026-12-02 with per-thread CPU from /proc: writer 7.5 s of the delivery's 11.6 s,
the fold 5.6 s of that). This writes the journal a run writes (claim groups of ``--group`` items in key
order, one ``delivered`` row per request of ``--per-request``, and the ``group`` row of a group delivered
whole, unless ``--per-item``), then folds it in the writer's slices, and reports CPU microseconds per
item, so a change to the fold can be measured without HTTP or DuckDB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_compare import postgres_admin  # noqa: E402
from connectors.ledger import Ledger, open_ledger  # noqa: E402
from connectors.ledger.store import Store  # noqa: E402
from connectors.ledger.writer import FOLD_SLICE_ITEMS  # noqa: E402

IN_FLIGHT_GROUPS = 8  # claim groups claimed ahead or still waiting for answers when a fold starts

DESTINATION = "bench-" + "0" * 26


def write_journal(ledger: Ledger, items: int, group: int, per_request: int, whole: bool) -> list[int]:
    """The journal rows of one run, where a run's writer puts them (:meth:`Ledger.open_journal`): returns
    each claim group's seq (what the writer folds up to)."""
    seqs: list[int] = []
    journal = ledger.open_journal()
    try:
        _write_groups(journal, items, group, per_request, seqs, whole)
    finally:
        journal.close()
    return seqs


def _write_groups(ledger: Store, items: int, group: int, per_request: int, seqs: list[int], whole: bool) -> None:
    with ledger.batch():
        for g in range(0, items, group):
            rows = sorted(
                [hashlib.sha256(f"{i}".encode()).hexdigest()[:32], f"evt_{i}", "h" * 32, "2026-06-01T00:00:00.000+00:00"]
                for i in range(g, min(g + group, items))
            )
            claim = f"c{g}"
            seqs.append(ledger.journal("claim", DESTINATION, "bench", "publish_events", "run1", claim,
                                       json.dumps(rows), len(rows), state="in_doubt"))
            for r in range(0, len(rows), per_request):
                keys = [row[0] for row in rows[r:r + per_request]]
                ledger.journal("delivered", DESTINATION, "bench", "publish_events", "run1", claim,
                               json.dumps(keys), len(keys))
            if whole:  # every item new and accepted: the writer's group row (one ledger row for the group)
                ledger.journal("group", DESTINATION, "bench", "publish_events", "run1", claim,
                               json.dumps([row[0] for row in rows]), len(rows), state=rows[0][3], reason=rows[0][3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--group", type=int, default=2_000, help="items per claim group (the engine's)")
    parser.add_argument("--per-request", type=int, default=100)
    parser.add_argument("--slice", type=int, default=FOLD_SLICE_ITEMS,
                        help="claimed items between folds (the writer's FOLD_SLICE_ITEMS)")
    parser.add_argument("--per-item", action="store_true",
                        help="no group rows: every item folded into its own row (groups not delivered whole)")
    parser.add_argument("--postgres", action="store_true",
                        help="a fresh database on 127.0.0.1:5432 (dropped after); default: a fresh SQLite file")
    args = parser.parse_args()
    database = f"syncline_bench_fold_{int(time.time() * 1000) % 10**9}"
    with tempfile.TemporaryDirectory(prefix="bench-fold-") as tmp:
        if args.postgres:
            postgres_admin(f'CREATE DATABASE "{database}"')
        ledger = open_ledger(f"postgresql://postgres@127.0.0.1:5432/{database}" if args.postgres
                             else str(Path(tmp) / "ledger.sqlite"))
        try:
            started = time.perf_counter()
            seqs = write_journal(ledger, args.items, args.group, args.per_request, not args.per_item)
            journal_s = time.perf_counter() - started
            # Fold as the writer does: every --slice items, up to the oldest claim not answered yet.
            per_slice = max(1, args.slice // args.group)
            cpu, wall = time.process_time(), time.perf_counter()
            for end in range(per_slice, len(seqs) - IN_FLIGHT_GROUPS + 1, per_slice):
                ledger.fold(before=seqs[end])  # outside any transaction, as the writer's folder calls it
            ledger.fold()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            delivered = ledger.counts("bench").get("delivered", 0)
        finally:
            ledger.close()
            if args.postgres:
                postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    # On Postgres the fold's CPU is the server's: the wall time is the figure there.
    print(f"journal {journal_s:.2f} s; fold {wall:.2f} s wall ({wall / args.items * 1e6:.1f} us per item), "
          f"{cpu:.2f} s CPU in this process ({cpu / args.items * 1e6:.1f} us per item); "
          f"{delivered} delivered of {args.items}")
    if delivered != args.items:
        sys.exit("the fold lost items")


if __name__ == "__main__":
    main()

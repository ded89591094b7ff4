"""Mirror mode end to end against the sandbox: what the vendor receives on reruns, not only our counters.

``mode: mirror`` resends an item whose payload changed since it was delivered (the planner compares
``payload_hash`` with the ledger's); an unchanged item is skipped. The packaged ``users_to_screeb`` sync
(identify events, mirror) is run on the sample warehouse's ``analytics.app_users``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

import pipelines
from connectors.runner import run_sync
from connectors.spec import load_sync_file
from pipelines.sample_data import screeb as screeb_sample

SYNCS = Path(pipelines.__file__).parent / "syncs"
USERS = 400
NO_ALIAS = [i + 1 for i in range(USERS) if i % 97 == 41]  # sample rows without an external_id: rejected


def _execute(path: Path, sql: str) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(sql)
    finally:
        con.close()


def _events(sandbox) -> tuple[int, list[dict]]:
    """(requests Screeb's /1.0/event answered, items it stored)."""
    stats = sandbox.stats()["screeb"].get("event", {})
    return stats.get("requests", 0), sandbox.records("screeb", "event")


def test_users_mirror_sends_nothing_unchanged_and_exactly_the_changed_users(sandbox, sample_warehouse):
    path = sample_warehouse(screeb_sample)
    spec = load_sync_file(SYNCS / "users_to_screeb.yaml")
    assert spec.mode == "mirror" and spec.endpoint.qualified_name.endswith("event")

    first = run_sync(spec)
    assert first.status == "success"
    assert first.delivered == USERS - len(NO_ALIAS) and first.rejected == len(NO_ALIAS)
    requests, received = _events(sandbox)
    assert len(received) == first.delivered and {r["type"] for r in received} == {"identify"}
    assert requests == -(-first.delivered // 100)

    # No change: nothing reaches Screeb (the sandbox's own request count and records say so).
    second = run_sync(spec)
    assert second.status == "success" and second.delivered == 0 and second.requests == 0
    assert second.skipped == first.delivered
    assert _events(sandbox) == (requests, received)

    # Three users' traits change (and their updated_at, as a real table would): exactly those are resent.
    changed = {5: "usr_0005", 17: "usr_0017", 250: "usr_0250"}
    _execute(path, f"""UPDATE analytics.app_users SET plan = 'enterprise-plus', sessions_30d = sessions_30d + 1,
                       updated_at = updated_at + INTERVAL 1 HOUR WHERE user_id IN ({", ".join(map(str, changed))})""")
    third = run_sync(spec)
    assert third.status == "success" and third.delivered == 3 and third.requests == 1
    requests_after, received_after = _events(sandbox)
    assert requests_after == requests + 1
    new = received_after[len(received):]
    assert sorted(r["user_alias"] for r in new) == sorted(changed.values())
    assert all(r["type"] == "identify" and r["properties"]["plan"] == "enterprise-plus" for r in new)
    before = {r["user_alias"]: r for r in received}
    for item in new:  # the rest of each user's traits are sent as before, only the changed ones differ
        old = before[item["user_alias"]]
        assert item["properties"]["sessions_30d"] == old["properties"]["sessions_30d"] + 1
        assert item["properties"]["email"] == old["properties"]["email"]

    # And then nothing again.
    fourth = run_sync(spec)
    assert fourth.delivered == 0 and fourth.requests == 0
    assert _events(sandbox)[0] == requests_after


def test_a_user_changed_back_is_sent_again(sandbox, sample_warehouse):
    """Mirror compares with what was last delivered, not with any earlier version."""
    path = sample_warehouse(screeb_sample)
    spec = load_sync_file(SYNCS / "users_to_screeb.yaml")
    run_sync(spec)
    _execute(path, "UPDATE analytics.app_users SET role = 'owner' WHERE user_id = 9")
    assert run_sync(spec).delivered == 1
    _execute(path, "UPDATE analytics.app_users SET role = (['admin', 'member', 'viewer'])[1 + 8 % 3] WHERE user_id = 9")
    assert run_sync(spec).delivered == 1
    roles = [r["properties"].get("role") for r in sandbox.records("screeb", "event") if r["user_alias"] == "usr_0009"]
    assert roles == ["viewer", "owner", "viewer"]


MEMBERSHIPS = """
    CREATE TABLE analytics.memberships AS SELECT * FROM (VALUES
        ('usr_0001', 'company', 'Acme Inc', 'SaaS'),
        ('usr_0001', 'team', 'Growth', NULL),
        ('usr_0002', 'company', 'Globex', 'Retail'),
        ('usr_0003', 'workspace', 'ws-3', NULL)
    ) t(external_id, group_type, group_name, industry)
"""
MEMBERSHIPS_SQL = """
    SELECT _key, external_id AS user_alias, 'group.assign' AS type, group_type, group_name,
           {'industry': industry} AS properties
    FROM source
"""


def test_removing_a_group_membership_sends_one_group_unassign(sandbox, warehouse, write_sync):
    path = warehouse(MEMBERSHIPS)
    spec = write_sync(
        "memberships",
        """
        source: {table: analytics.memberships, key: [external_id, group_type, group_name]}
        destination: {vendor: screeb, endpoint: event}
        mode: mirror
        """,
        MEMBERSHIPS_SQL,
    )
    first = run_sync(spec)
    assert first.delivered == 4 and {r["type"] for r in sandbox.records("screeb", "event")} == {"group.assign"}
    requests = sandbox.stats()["screeb"]["event"]["requests"]

    _execute(path, "DELETE FROM analytics.memberships WHERE external_id = 'usr_0001' AND group_type = 'team'")
    second = run_sync(spec)

    new = sandbox.records("screeb", "event")[4:]
    assert new == [{"user_alias": "usr_0001", "type": "group.unassign", "group_type": "team", "group_name": "Growth"}]
    assert sandbox.stats()["screeb"]["event"]["requests"] == requests + 1
    assert (second.removed, second.delivered, second.skipped) == (1, 0, 3)
    assert run_sync(spec).requests == 0  # the removal is recorded: not sent twice

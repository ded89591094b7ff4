"""The vendor resources called from users' own assets, with ``dg.materialize()`` and real HTTP to the sandbox:
a DataFrame with hostile rows feeds ``TrubricsResource.publish_events``; the sandbox receives exactly the
valid rows, the rejects say why, a second materialization sends nothing, a partitioned asset delivers each
event once across a day and an overlapping single-run backfill (on a Postgres ledger), the metadata holds
the counts and the checks read the ledger (and fail for items in doubt, warn for possible duplicates).
Also: the generated resource module is current."""


import inspect

import dagster as dg
import pandas as pd
import pytest
from dagster import AssetExecutionContext

from connectors.ledger import open_ledger
from connectors.sandbox import Fault
from connectors.vendors import vendors
from pipelines import resourcegen
from pipelines.delivery import delivery_checks, sync_name
from pipelines.resources import ScreebResource, TrubricsResource, VendorResource, vendor_resource_class
from tests.conftest import FAST_DELIVERY
from tests.test_api import VALID_USERS, hostile_events

DAILY = dg.DailyPartitionsDefinition(start_date="2026-06-01", end_date="2026-06-04", timezone="UTC")


@dg.asset
def product_events() -> pd.DataFrame:
    return hostile_events()


@dg.asset
def events_to_trubrics(product_events: pd.DataFrame, trubrics: TrubricsResource) -> dg.MaterializeResult:
    result = trubrics.publish_events(product_events, key="event_id", cursor="timestamp", strict=True,
                                     delivery=FAST_DELIVERY)
    return dg.MaterializeResult(metadata=result.metadata)


@dg.asset(partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run())
def daily_events_to_trubrics(context: AssetExecutionContext, trubrics: TrubricsResource) -> dg.MaterializeResult:
    # The asset hands over every day it knows; the partition's window picks that day's rows by the cursor.
    result = trubrics.publish_events(
        hostile_events().rename(columns={"event": "event_name", "timestamp": "occurred_at"}),
        key="event_id", cursor="occurred_at", name="daily_events", delivery=FAST_DELIVERY,
        model="SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, properties FROM source",
    )
    context.log.info(result.summary())
    return dg.MaterializeResult(metadata=result.metadata)


def _metadata(result: dg.ExecuteInProcessResult, node: str, partitions: int = 1) -> dict:
    """The metadata of the run's materializations, which must all be alike.

    A choice (docs/resources.md, "Partitions and windows"): a single-run backfill is one delivery over the
    range, and Dagster records one materialization per partition of it, each with the metadata the asset
    returned: the whole range's counts (``window`` names the range), not per-day counts. Summing the
    partitions' counts over a range run therefore counts it once per day."""
    found = [{k: v.value for k, v in m.metadata.items()} for m in result.asset_materializations_for_node(node)]
    assert len(found) == partitions and all(f == found[0] for f in found), found
    return found[0]


def _received(sandbox) -> list[dict]:
    return sandbox.records("trubrics", "publish_events")


def test_an_asset_delivers_a_dataframe_with_hostile_rows_and_a_rerun_sends_nothing(sandbox):
    checks = delivery_checks(events_to_trubrics, vendor="trubrics", endpoint="publish_events", max_rejected_share=0.5)
    assets = [product_events, events_to_trubrics, *checks]
    first = dg.materialize(assets, resources={"trubrics": TrubricsResource()})
    assert first.success

    received = _received(sandbox)
    assert {r["user_id"] for r in received} == VALID_USERS and len(received) == 7
    meta = _metadata(first, "events_to_trubrics")
    assert (meta["items_delivered"], meta["items_rejected"], meta["items_skipped"], meta["items_in_doubt"]) == (7, 3, 0, 0)
    assert meta["source_rows"] == 10 and meta["status"] == "success"
    name = "events_to_trubrics_to_trubrics_publish_events"  # derived from the asset key
    assert meta["sync_name"] == name == sync_name(events_to_trubrics.key, "trubrics", "publish_events")
    reasons = meta["rejection_reasons"]
    assert "user_id is required" in reasons and "timestamp is required" in reasons and "event" in reasons
    evaluations = {c.check_name: c.passed for c in first.get_asset_check_evaluations()}
    assert evaluations == {f"{name}__no_items_in_doubt_or_failed": True,
                           f"{name}__rejected_share_under_threshold": True,  # 3 of 10 under 50%
                           f"{name}__no_possible_duplicates": True}

    requests = sandbox.stats()["trubrics"]["publish_events"]["requests"]
    second = dg.materialize(assets, resources={"trubrics": TrubricsResource()})
    assert second.success
    meta = _metadata(second, "events_to_trubrics")
    assert (meta["items_delivered"], meta["items_skipped"], meta["items_rejected"]) == (0, 7, 3)
    assert sandbox.stats()["trubrics"]["publish_events"]["requests"] == requests
    assert len(_received(sandbox)) == 7

    ledger = open_ledger()
    try:
        rejected = {i["source_key"]: i["reason"] for i in ledger.items(name, state="rejected")}
    finally:
        ledger.close()
    assert set(rejected) == {"e02", "e05", "e08"} and "user_id" in rejected["e02"]


def test_the_rejected_share_check_fails_over_its_threshold(sandbox):
    checks = delivery_checks(events_to_trubrics, vendor="trubrics", endpoint="publish_events")
    result = dg.materialize([product_events, events_to_trubrics, *checks], resources={"trubrics": TrubricsResource()})
    share = next(c for c in result.get_asset_check_evaluations() if c.check_name.endswith("rejected_share_under_threshold"))
    assert not share.passed and share.metadata["rejected_share"].value == 0.3
    assert "user_id is required" in share.metadata["rejection_reasons"].value


def test_the_duplicates_check_warns_after_a_resend_following_a_lost_answer(sandbox):
    # The answer to the one request is lost after the items landed. Trubrics can neither dedup nor be read
    # back, and delivery.in_doubt is resend (at-least-once, the default): the 7 items are sent again, so
    # the vendor may hold each twice, and the check says so (a warning). (The in-doubt check failing:
    # test_two_vendors_... below.)
    sandbox.set_fault("trubrics", "publish_events", Fault("drop_after", count=1))
    checks = delivery_checks(events_to_trubrics, vendor="trubrics", endpoint="publish_events", max_rejected_share=0.5)
    name = "events_to_trubrics_to_trubrics_publish_events"
    result = dg.materialize([product_events, events_to_trubrics, *checks], resources={"trubrics": TrubricsResource()})
    assert result.success
    meta = _metadata(result, "events_to_trubrics")
    assert (meta["items_delivered"], meta["resent_after_unknown_outcome"], meta["items_in_doubt"]) == (7, 7, 0)

    found = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert len(found) == 3 and found[f"{name}__no_items_in_doubt_or_failed"].passed
    duplicates = found[f"{name}__no_possible_duplicates"]
    assert not duplicates.passed and duplicates.severity == dg.AssetCheckSeverity.WARN
    assert duplicates.metadata["possible_duplicates"].value == 7
    assert "the vendor may hold up to 7 duplicates" in (duplicates.description or "")
    assert len(_received(sandbox)) == 14  # what the check warns about: each item twice at the vendor


def test_a_partitioned_asset_delivers_each_event_once_across_a_day_and_an_overlapping_backfill(
        sandbox, postgres_ledger_url):
    resources = {"trubrics": TrubricsResource(ledger_url=postgres_ledger_url)}
    checks = delivery_checks(daily_events_to_trubrics, name="daily_events", ledger_url=postgres_ledger_url)
    one_day = dg.materialize([daily_events_to_trubrics, *checks], resources=resources, partition_key="2026-06-02")
    assert one_day.success
    meta = _metadata(one_day, "daily_events_to_trubrics")
    assert meta["window"] == "2026-06-02" and (meta["items_delivered"], meta["source_rows"]) == (3, 3)
    assert meta["rows_outside_window"] == 7 and meta["input_rows"] == 10

    # Three days as one run (what a single-run backfill launches): the day already delivered is skipped.
    span_tags = {"dagster/asset_partition_range_start": "2026-06-01", "dagster/asset_partition_range_end": "2026-06-03"}
    span = dg.materialize([daily_events_to_trubrics, *checks], resources=resources, tags=span_tags)
    assert span.success
    # The choice named in _metadata: each of the 3 partitions carries the whole range's counts.
    meta = _metadata(span, "daily_events_to_trubrics", partitions=3)
    assert meta["window"] == "2026-06-01..2026-06-03"
    # e08 has no cursor: in no window (the run notes say so); e02 has no user: rejected.
    assert (meta["items_delivered"], meta["items_skipped"], meta["items_rejected"]) == (5, 3, 1)
    settled = {c.check_name: c.passed for c in span.get_asset_check_evaluations()}
    assert settled["daily_events__no_items_in_doubt_or_failed"] is True and len(settled) == 3

    received = _received(sandbox)
    assert len(received) == len({r["user_id"] for r in received}) == 8  # the blank event is text here

    # The same 3-day backfill again: exactly once means not one request more.
    requests = sandbox.stats()["trubrics"]["publish_events"]["requests"]
    again = dg.materialize([daily_events_to_trubrics, *checks], resources=resources, tags=span_tags)
    assert again.success
    meta = _metadata(again, "daily_events_to_trubrics", partitions=3)
    assert (meta["items_delivered"], meta["items_skipped"], meta["items_rejected"]) == (0, 8, 1)
    assert sandbox.stats()["trubrics"]["publish_events"]["requests"] == requests
    assert _received(sandbox) == received

    ledger = open_ledger(postgres_ledger_url)
    try:
        assert ledger.counts("daily_events") == {"delivered": 8, "rejected": 1, "in_doubt": 0, "failed": 0}
        assert [r["span"] for r in ledger.runs("daily_events")] == ["2026-06-01..2026-06-03"] * 2 + ["2026-06-02"]
    finally:
        ledger.close()


def test_a_delivery_that_stops_fails_the_step_like_a_generated_asset(sandbox):
    @dg.asset
    def stopped(trubrics: TrubricsResource) -> None:
        trubrics.publish_events(hostile_events(), key="event_id", name="stopped_out", delivery=FAST_DELIVERY)

    result = dg.materialize([stopped], resources={"trubrics": TrubricsResource(api_key="wrong-key")},
                            raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "HTTP 401" in str(failure.event_specific_data)
    assert _received(sandbox) == []


def test_two_vendors_from_one_asset_and_partial_runs_are_not_ok_and_fail_their_check(sandbox):
    sandbox.set_fault("screeb", "event", Fault("store_503", count=10))  # 1 request is made (max_attempts 1)

    @dg.asset
    def fan_out(trubrics: TrubricsResource, screeb: ScreebResource) -> dg.MaterializeResult:
        frame = hostile_events().drop(index=[2, 5, 8])
        sent = trubrics.publish_events(frame, key="event_id", delivery=FAST_DELIVERY)
        held = screeb.event(frame, key="event_id", delivery={**FAST_DELIVERY, "in_doubt": "hold", "max_attempts": 1},
                            model="SELECT _key, user_id AS user_alias, 'track' AS type, event AS event_name FROM source")
        assert sent.ok and not held.ok and held.status == "partial" and held.in_doubt == 7
        return dg.MaterializeResult(metadata=sent.metadata)

    checks = [*delivery_checks(fan_out, vendor="trubrics", endpoint="publish_events"),
              *delivery_checks(fan_out, vendor="screeb", endpoint="event")]
    result = dg.materialize([fan_out, *checks], resources={"trubrics": TrubricsResource(), "screeb": ScreebResource()})
    assert result.success
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert len(evaluations) == 6
    held = evaluations["fan_out_to_screeb_event__no_items_in_doubt_or_failed"]
    assert not held.passed and held.metadata["items_in_doubt"].value == 7
    assert "in_doubt" in held.metadata["examples"].value
    assert evaluations["fan_out_to_trubrics_publish_events__no_items_in_doubt_or_failed"].passed
    assert sandbox.stats()["screeb"]["event"]["requests"] == 1
    ledger = open_ledger()
    try:
        assert ledger.counts("fan_out_to_screeb_event")["in_doubt"] == 7
        assert ledger.counts("fan_out_to_trubrics_publish_events")["delivered"] == 7
    finally:
        ledger.close()


def test_outside_an_asset_a_name_is_required(sandbox):
    with pytest.raises(dg.DagsterInvariantViolationError, match="pass name="):
        TrubricsResource().publish_events(hostile_events(), key="event_id")
    result = TrubricsResource().publish_events(hostile_events(), key="event_id", name="script_out")
    assert result.ok and result.delivered == 8


def test_names_derived_from_asset_keys_are_valid_and_distinct():
    assert sync_name(["marketing", "Events-Out"], "trubrics", "publish_events") == \
        "marketing_events_out_to_trubrics_publish_events"
    long_a, long_b = (sync_name(["x" * 80 + tail], "screeb", "event") for tail in "ab")
    assert len(long_a) == 63 and long_a != long_b
    assert sync_name("9lives", "flux", "events").startswith("a_9lives")


def test_the_generated_resource_module_is_current_and_every_endpoint_has_a_method():
    assert resourcegen.TARGET.read_text() == resourcegen.render(), "run: python -m pipelines.resourcegen"
    for vendor in vendors().values():
        cls = vendor_resource_class(vendor)
        assert cls.__module__ == "pipelines.vendor_resources" and issubclass(cls, VendorResource)
        assert {c.name for c in vendor.credentials} <= set(cls.model_fields)
        for endpoint in vendor.endpoints.values():
            method = getattr(cls, resourcegen.method_name(endpoint))
            assert endpoint.path in (method.__doc__ or "")
            assert list(inspect.signature(method).parameters)[:3] == ["self", "data", "key"]


def test_credentials_are_only_the_vendors_own_fields_and_an_env_var_is_its_value(monkeypatch):
    from pipelines.resources import vendor_resource

    resource = TrubricsResource(api_key="k", base_url="http://x", ledger_url="/tmp/ledger.sqlite")
    assert resource.credentials() == {"api_key": "k"}

    unset = vendor_resource(vendors()["trubrics"])  # no variable where the code loads: read at run time
    assert unset.api_key is None and unset.credentials() == {}

    monkeypatch.setenv("TRUBRICS_API_KEY", "from-env")
    made = vendor_resource(vendors()["trubrics"])
    assert isinstance(made, TrubricsResource)
    assert isinstance(made.api_key, dg.EnvVar) and made.api_key.env_var_name == "TRUBRICS_API_KEY"  # not the value
    assert made.credentials() == {"api_key": "from-env"}  # used as is, never the variable's name
    assert made.process_config_and_initialize().credentials() == {"api_key": "from-env"}  # as Dagster runs it


def test_window_of_a_partition_range(sandbox):
    seen: list[str] = []

    @dg.asset(partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run())
    def ranged(context: AssetExecutionContext, trubrics: TrubricsResource) -> None:
        result = trubrics.publish_events(hostile_events(), key="event_id", cursor="timestamp", dry_run=True)
        seen.append(result.window)

    dg.materialize([ranged], resources={"trubrics": TrubricsResource()}, tags={
        "dagster/asset_partition_range_start": "2026-06-02", "dagster/asset_partition_range_end": "2026-06-03"})
    assert seen == ["2026-06-02..2026-06-03"] and _received(sandbox) == []

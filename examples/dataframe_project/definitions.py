"""An example Dagster project that delivers a DataFrame with syncline's connector resources.

- ``product_events``: an ordinary asset that computes a pandas DataFrame from the sample warehouse (built
  on first use under this project's ``.syncline`` folder, or ``$SYNCLINE_HOME``);
- ``product_events_in_trubrics`` and ``product_events_in_screeb``: one step that sends that DataFrame to
  Trubrics ``publish_events`` and to Screeb ``event`` through ``TrubricsResource`` and ``ScreebResource``,
  each with its own materialization (plotted counts, a reasons table) and checks;
- ``deliver_product_events_job`` on an hourly schedule (off until switched on in the UI).

The ledger makes every run safe to repeat: an hourly run sends only what is new, however often it runs.
See README.md (how to run it) and docs/resources.md (the API).
"""

from collections.abc import Iterator

import dagster as dg
import duckdb
import pandas as pd

from connectors import settings
from pipelines.delivery import delivery_checks
from pipelines.resources import ScreebResource, TrubricsResource
from pipelines.sample_data import build_warehouse

TRUBRICS_NAME = "example_events_to_trubrics"  # the ledger's names: keep them when assets are renamed
SCREEB_NAME = "example_events_to_screeb"
IN_TRUBRICS = dg.AssetKey("product_events_in_trubrics")
IN_SCREEB = dg.AssetKey("product_events_in_screeb")


@dg.asset(kinds={"duckdb", "pandas"}, description="Product events of the sample warehouse, as a DataFrame.")
def product_events() -> pd.DataFrame:
    path = settings.warehouse_path()
    if not path.exists():
        build_warehouse(path, settings.home())
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(
            "SELECT event_id, user_id, event_name, occurred_at, plan, country, thread_id "
            "FROM analytics.product_events"
        ).df()
    finally:
        con.close()


@dg.multi_asset(
    specs=[
        dg.AssetSpec(IN_TRUBRICS, deps=[product_events], kinds={"trubrics"},
                     description="product_events delivered to Trubrics publish_events (ledger-backed)."),
        dg.AssetSpec(IN_SCREEB, deps=[product_events], kinds={"screeb"},
                     description="product_events delivered to Screeb as track events (ledger-backed)."),
    ],
    ins={"events": dg.AssetIn(product_events.key)},
)
def deliver_product_events(
    events: pd.DataFrame, trubrics: TrubricsResource, screeb: ScreebResource
) -> Iterator[dg.MaterializeResult]:
    # The DataFrame's columns are not the vendors' field names: a model (DuckDB SQL over `source`, as in a
    # sync file) maps them. Rows that break a vendor's rules are rejected with a reason, the rest are sent.
    sent = trubrics.publish_events(
        events, key="event_id", cursor="occurred_at", name=TRUBRICS_NAME,
        model="""SELECT _key, user_id, event_name AS event, occurred_at AS timestamp,
                        {'$thread_id': thread_id, 'plan': plan, 'country': country} AS properties
                 FROM source""",
    )
    yield dg.MaterializeResult(asset_key=IN_TRUBRICS, metadata=sent.metadata)
    tracked = screeb.event(
        events, key="event_id", cursor="occurred_at", name=SCREEB_NAME,
        model="""SELECT _key, user_id AS user_alias, 'track' AS type, event_name,
                        {'plan': plan, 'country': country,
                         'occurred_at': strftime(occurred_at, '%Y-%m-%dT%H:%M:%SZ')} AS properties
                 FROM source""",
    )
    yield dg.MaterializeResult(asset_key=IN_SCREEB, metadata=tracked.metadata)


deliver_job = dg.define_asset_job(
    "deliver_product_events_job", selection=dg.AssetSelection.assets(product_events, IN_TRUBRICS, IN_SCREEB),
    description="Compute product_events and deliver them to Trubrics and Screeb.",
)

defs = dg.Definitions(
    assets=[product_events, deliver_product_events],
    asset_checks=[
        *delivery_checks(IN_TRUBRICS, name=TRUBRICS_NAME, max_rejected_share=0.05),
        *delivery_checks(IN_SCREEB, name=SCREEB_NAME, max_rejected_share=0.05),
    ],
    jobs=[deliver_job],
    schedules=[dg.ScheduleDefinition(name="deliver_product_events_hourly", job=deliver_job,
                                     cron_schedule="25 * * * *", execution_timezone="UTC")],
    resources={
        # Secrets come from the environment (EnvVar: never a config value); base URLs from
        # TRUBRICS_BASE_URL / SCREEB_BASE_URL, else the vendors' public URLs.
        "trubrics": TrubricsResource(api_key=dg.EnvVar("TRUBRICS_API_KEY")),
        "screeb": ScreebResource(api_token=dg.EnvVar("SCREEB_API_TOKEN")),
    },
)

"""Trubrics ingestion API (``docs/vendor-api/trubrics.md``).

``POST /publish_events`` and ``POST /publish_llm_events``: a JSON array of 1-100 items, ``x-api-key``
header, 200 ``{"status": "success"}``, 401 on a bad key, 422 on a validation error (the whole batch is
refused, so the engine bisects to isolate the bad item).

Choices where the document is silent (configurable per sync under ``delivery:``):
- No byte limit is documented: requests are capped at 1 MB, a conservative size for an HTTP ingestion API.
- No rate limit is documented: none is applied; 429 and ``Retry-After`` are still honoured.
- Timestamps are always sent as ISO 8601 with an explicit offset (the official SDK does the same);
  ``timestamp`` on LLM events is optional and defaults to the send time at Trubrics.
- ``$thread_id`` goes inside ``properties`` (the model builds it with ``{'$thread_id': ...}``).
- An empty array is never sent: the engine only builds requests from at least one item.
"""

from __future__ import annotations

from collections.abc import Mapping

from connectors.engine.endpoint import Credential, Endpoint, Field, HttpResponse, Rule, Vendor


class TrubricsEndpoint(Endpoint):
    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"x-api-key": credentials["api_key"]}

    def error_reason(self, response: HttpResponse) -> str:
        body = response.json()
        if response.status == 422 and isinstance(body, dict) and isinstance(body.get("detail"), list):
            parts = []
            for problem in body["detail"][:3]:
                if isinstance(problem, dict):
                    loc = ".".join(str(p) for p in problem.get("loc", []) if p != "body")
                    parts.append(f"{loc}: {problem.get('msg', '')}".strip(": "))
            if parts:
                return "Trubrics refused the item (422): " + "; ".join(parts)
        return super().error_reason(response)


_THREAD_ID_IS_STRING = Rule(
    when="json_type(TRY_CAST(properties AS JSON), '$.\"$thread_id\"') NOT IN ('VARCHAR', 'NULL')",
    reason="'properties.$thread_id must be a string'",
)

PUBLISH_EVENTS = TrubricsEndpoint(
    vendor="trubrics",
    name="publish_events",
    path="/publish_events",
    description="Product analytics events (user_id, event, timestamp, properties).",
    fields=(
        Field("user_id", "string", required=True),
        Field("event", "string", required=True),
        Field("timestamp", "timestamp", required=True),
        Field("properties", "object"),
    ),
    rules=(_THREAD_ID_IS_STRING,),
    max_items=100,
)

PUBLISH_LLM_EVENTS = TrubricsEndpoint(
    vendor="trubrics",
    name="publish_llm_events",
    path="/publish_llm_events",
    description="LLM events (prompt + generation); Trubrics expands each into a prompt and a generation event.",
    fields=(
        Field("user_id", "string", required=True),
        Field("prompt", "string", required=True),
        Field("generation", "string", required=True),
        Field("assistant_id", "string"),
        Field("timestamp", "timestamp"),
        Field("latency", "number", min_value=0),
        Field("prompt_event_name", "string"),
        Field("generation_event_name", "string"),
        Field("properties", "object"),
    ),
    rules=(_THREAD_ID_IS_STRING,),
    max_items=100,
)

VENDOR = Vendor(
    name="trubrics",
    title="Trubrics",
    env_prefix="TRUBRICS",
    default_base_url="https://app.trubrics.com/api/ingestion",
    credentials=(Credential("api_key", "TRUBRICS_API_KEY"),),
    endpoints={e.name: e for e in (PUBLISH_EVENTS, PUBLISH_LLM_EVENTS)},
)

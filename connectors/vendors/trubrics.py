"""Trubrics ingestion API (``docs/vendor-api/trubrics.md``).

``POST /publish_events`` and ``POST /publish_llm_events``: a JSON array of 1-100 items, ``x-api-key``
header, 200 ``{"status": "success"}``, 401 on a bad key, 422 on a validation error (the whole batch is
refused, so the engine bisects to isolate the bad item).

Checked before sending, because the OpenAPI document says so (each Field's ``basis`` quotes it): the
required fields (``Event.required``: user_id, event, timestamp; ``LLMEvent.required``: user_id, prompt,
generation), the JSON types (``type: string``/``number``/``object``), ``format: date-time`` timestamps
(RFC 3339: with an offset) and ``maxItems: 100``. Nothing else: an empty or blank string is a string, a
negative ``latency`` a number, ``$thread_id`` any JSON value. Values go out as the model wrote them.

Opt-in rules (``strict: true`` or ``strict: [name, ...]`` in the sync file), checks the document does not
make but a careful team may want:
- ``<field>_not_blank`` for every required text field: reject an empty or whitespace-only text;
- ``latency_not_negative``: a latency below 0 s (seconds elapsed cannot be negative, but the document sets
  no minimum);
- ``thread_id_string``: ``properties.$thread_id`` must be a JSON string (the document only shows one).

Choices where the document is silent (configurable per sync under ``delivery:``):
- No byte limit is documented: requests are capped at 1 MB, a conservative size for an HTTP ingestion API.
- No rate limit is documented: none is applied; 429 and ``Retry-After`` are still honoured.
- Timestamps are always sent as ISO 8601 with an explicit offset (the official SDK does the same);
  ``timestamp`` on LLM events is optional and defaults to the send time at Trubrics.
- ``$thread_id`` goes inside ``properties`` (the model builds it with ``{'$thread_id': ...}``).
- An empty array is never sent: the engine only builds requests from at least one item.
- The 422 body is undocumented: FastAPI's ``{"detail": [{"loc", "msg"}]}`` is read when it is there,
  any other body (JSON or not) is quoted as it came, so a refusal always has a readable reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from connectors.engine.endpoint import Credential, Endpoint, Field, HttpResponse, Rule, Vendor, not_blank

DOC = "docs/vendor-api/trubrics.md"


class TrubricsEndpoint(Endpoint):
    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"x-api-key": credentials["api_key"]}

    def error_reason(self, response: HttpResponse) -> str:
        """FastAPI's 422 shape when the body has it (an assumption: the document gives no error body);
        otherwise the engine's default, which quotes the body whatever it is."""
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
        parts: list[str] = []
        if isinstance(detail, list):
            for problem in detail[:3]:
                if isinstance(problem, dict):
                    loc = problem.get("loc")
                    where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else str(loc or "")
                    what = problem.get("msg") or problem.get("message") or ""
                    parts.append(f"{where}: {what}".strip(": ") if where else str(what))
                elif isinstance(problem, str):
                    parts.append(problem)
        elif isinstance(detail, str) and detail:
            parts.append(detail)
        parts = [p for p in parts if p]
        if parts:
            return f"Trubrics refused the item ({response.status}): " + "; ".join(parts)
        return super().error_reason(response)


def _texts_not_blank(*names: str) -> tuple[Rule, ...]:
    return tuple(
        not_blank(name, basis=f"choice: {DOC} types {name} as `{name}: type: string` and sets no minLength")
        for name in names
    )


_THREAD_ID_IS_STRING = Rule(
    when="json_type(TRY_CAST(properties AS JSON), '$.\"$thread_id\"') NOT IN ('VARCHAR', 'NULL')",
    reason="'properties.$thread_id must be a string, got ' || left(CAST(json_extract(TRY_CAST(properties AS JSON), '$.\"$thread_id\"') AS VARCHAR), 60)",
    name="thread_id_string",
    field="properties",
    basis=(
        "choice: the document calls $thread_id `the reserved $thread_id property` and shows a string "
        "(`$thread_id: thread_abc`) but gives it no type"
    ),
    opt_in=True,
)

_LATENCY_NOT_NEGATIVE = Rule(
    when="TRY_CAST(latency AS DOUBLE) < 0",
    reason="'latency must be at least 0 seconds, got ' || CAST(latency AS VARCHAR)",
    name="latency_not_negative",
    field="latency",
    basis=(
        "choice: LLMEvent.latency is `latency: type: number format: float description: Seconds elapsed "
        "between the prompt and the generation.`, with no minimum"
    ),
    opt_in=True,
)

_PROPERTIES = ("doc: `properties: type: object additionalProperties: true description: >- Custom event/user "
               "properties` (Event; LLMEvent's: `properties: type: object additionalProperties: true "
               "description: >- Custom properties.`)")

_EVENT_REQUIRED = "doc: Event schema `Event: type: object required: - user_id - event - timestamp`"
_LLM_REQUIRED = "doc: LLMEvent schema `LLMEvent: type: object required: - user_id - prompt - generation`"

PUBLISH_EVENTS = TrubricsEndpoint(
    vendor="trubrics",
    name="publish_events",
    path="/publish_events",
    description="Product analytics events (user_id, event, timestamp, properties).",
    fields=(
        Field("user_id", "string", required=True,
              basis=f"{_EVENT_REQUIRED}; `user_id: type: string`"),
        Field("event", "string", required=True,
              basis=f"{_EVENT_REQUIRED}; `event: type: string`"),
        Field("timestamp", "timestamp", required=True,
              basis=f"{_EVENT_REQUIRED}; `timestamp: type: string format: date-time description: Event timestamp.` "
                    "(OpenAPI's date-time is RFC 3339: a date, a time and an offset)"),
        Field("properties", "object", basis=_PROPERTIES),
    ),
    rules=(*_texts_not_blank("user_id", "event"), _THREAD_ID_IS_STRING),
    max_items=100,  # doc: requestBody schema `type: array maxItems: 100`
)

PUBLISH_LLM_EVENTS = TrubricsEndpoint(
    vendor="trubrics",
    name="publish_llm_events",
    path="/publish_llm_events",
    description="LLM events (prompt + generation); Trubrics expands each into a prompt and a generation event.",
    fields=(
        Field("user_id", "string", required=True,
              basis=f"{_LLM_REQUIRED}; `user_id: type: string`"),
        Field("prompt", "string", required=True,
              basis=f"{_LLM_REQUIRED}; `prompt: type: string`"),
        Field("generation", "string", required=True,
              basis=f"{_LLM_REQUIRED}; `generation: type: string`"),
        Field("assistant_id", "string", basis="doc: LLMEvent `assistant_id: type: string` (optional)"),
        Field("timestamp", "timestamp",
              basis="doc: LLMEvent `timestamp: type: string format: date-time description: Generation timestamp. "
                    "Defaults to the current time.` (optional; OpenAPI's date-time is RFC 3339, with an offset)"),
        Field("latency", "number", basis="doc: LLMEvent `latency: type: number format: float` (optional, no minimum)"),
        Field("prompt_event_name", "string", basis="doc: LLMEvent `prompt_event_name: type: string` (optional)"),
        Field("generation_event_name", "string", basis="doc: LLMEvent `generation_event_name: type: string` (optional)"),
        Field("properties", "object", basis=_PROPERTIES),
    ),
    rules=(*_texts_not_blank("user_id", "prompt", "generation"), _LATENCY_NOT_NEGATIVE, _THREAD_ID_IS_STRING),
    max_items=100,  # doc: requestBody schema `type: array maxItems: 100`
)

VENDOR = Vendor(
    name="trubrics",
    title="Trubrics",
    env_prefix="TRUBRICS",
    default_base_url="https://app.trubrics.com/api/ingestion",
    credentials=(Credential("api_key", "TRUBRICS_API_KEY"),),
    endpoints={e.name: e for e in (PUBLISH_EVENTS, PUBLISH_LLM_EVENTS)},
)

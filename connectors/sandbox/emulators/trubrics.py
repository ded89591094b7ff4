"""Trubrics emulator: ``POST /publish_events`` and ``/publish_llm_events`` strict to the OpenAPI document.

``x-api-key`` must match (401 otherwise); the body must be a JSON array of 1-100 objects with the required
fields and types; ``timestamp`` must be an RFC 3339 date-time (with an offset); ``properties`` an object.
Any problem answers 422 with FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` shape and stores nothing
(the whole batch is refused, as a validating server does).
"""

from __future__ import annotations

from typing import Any

from connectors.sandbox.base import Emulator, Request, Response, Route, is_iso_datetime

MAX_ITEMS = 100


SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {
    # field -> (type, required)
    "publish_events": {
        "user_id": ("string", True),
        "event": ("string", True),
        "timestamp": ("datetime", True),
        "properties": ("object", False),
    },
    "publish_llm_events": {
        "user_id": ("string", True),
        "prompt": ("string", True),
        "generation": ("string", True),
        "assistant_id": ("string", False),
        "timestamp": ("datetime", False),
        "latency": ("number", False),
        "prompt_event_name": ("string", False),
        "generation_event_name": ("string", False),
        "properties": ("object", False),
    },
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "datetime":
        return is_iso_datetime(value)
    return True


class TrubricsEmulator(Emulator):
    vendor = "trubrics"
    keys = {"api_key": "sandbox-trubrics-key"}

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/publish_events", lambda r: self._publish(r, "publish_events"), "publish_events"),
            Route("POST", "/publish_llm_events", lambda r: self._publish(r, "publish_llm_events"), "publish_llm_events"),
        ]

    def validation_error(self, endpoint: str, message: str) -> Response:
        return Response(422, {"detail": [{"loc": ["body"], "msg": message, "type": "value_error"}]})

    def _publish(self, request: Request, endpoint: str) -> Response:
        if request.headers.get("x-api-key") != self.keys["api_key"]:
            return Response(401, {"detail": "Invalid or missing x-api-key"})
        try:
            body = request.json()
        except ValueError:
            return self.validation_error(endpoint, "body is not valid JSON")
        if not isinstance(body, list):
            return self.validation_error(endpoint, "body must be an array of events")
        self.note_batch(endpoint, len(body))
        if not body:
            return self.validation_error(endpoint, "at least one event is required")
        if len(body) > MAX_ITEMS:
            return Response(422, {"detail": [{"loc": ["body"], "msg": f"ensure this value has at most {MAX_ITEMS} items",
                                              "type": "value_error.list.max_items"}]})
        problems = []
        schema = SCHEMAS[endpoint]
        for index, item in enumerate(body):
            if not isinstance(item, dict):
                problems.append({"loc": ["body", index], "msg": "value is not a valid dict", "type": "type_error.dict"})
                continue
            for name, (kind, required) in schema.items():
                if name not in item or item[name] is None:
                    if required:
                        problems.append({"loc": ["body", index, name], "msg": "field required", "type": "value_error.missing"})
                    continue
                if not _type_ok(kind, item[name]):
                    problems.append({"loc": ["body", index, name], "msg": f"value is not a valid {kind}", "type": f"type_error.{kind}"})
            thread = (item.get("properties") or {}).get("$thread_id") if isinstance(item.get("properties"), dict) else None
            if thread is not None and not isinstance(thread, str):
                problems.append({"loc": ["body", index, "properties", "$thread_id"], "msg": "str type expected", "type": "type_error.str"})
        if problems:
            return Response(422, {"detail": problems})
        self.record(endpoint, body)
        return Response(200, {"status": "success"})


EMULATOR = TrubricsEmulator

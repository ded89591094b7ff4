"""Trubrics emulator: ``POST /publish_events`` and ``/publish_llm_events`` strict to the OpenAPI document.

What the document says, enforced: ``x-api-key`` must match (401 otherwise); the body must be a JSON array
of 1-100 objects (``maxItems: 100``) with the ``required`` fields and their ``type``s (``string``,
``number``, ``object``); ``format: date-time`` timestamps must be RFC 3339 date-times (with an offset).
Any problem answers 422 and stores nothing (the whole batch is refused, as a validating server does).
Bodies are parsed strictly (:func:`connectors.sandbox.base.strict_json`: no NaN/Infinity, no duplicate
keys...): a body that is not strict JSON is a 422 and is counted in ``invalid_json``.

Where the document is silent, every plausible variant is accepted:
- empty or blank strings (``"user_id": ""``) are strings; a negative or zero ``latency`` is a number;
- ``properties`` may hold any JSON, including a ``$thread_id`` that is not a string (the document calls it
  "the reserved $thread_id property" without a type);
- members the schema does not list are ignored (``additionalProperties`` is not set on the item schemas,
  which means extra members are allowed); ``null`` for an optional member is taken as absent;
- an empty array (the schema sets ``maxItems: 100`` and no ``minItems``) is answered 200, storing nothing.

Assumptions:
- date-times are read as Python's ``datetime.fromisoformat`` reads them (``T`` or a space, seconds
  optional), with an offset required; a FastAPI/pydantic server is similarly lenient;
- the 422 body is undocumented: by default FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``.
  ``control("error_shape", {"shape": ...})`` switches it to any of :data:`ERROR_SHAPES` (including plain
  text and an empty body), so a test can prove the connector copes with any of them.
"""

from __future__ import annotations

from typing import Any

from connectors.sandbox.base import Emulator, Request, Response, Route, is_iso_datetime

MAX_ITEMS = 100
ERROR_SHAPES = ("fastapi", "message", "text", "empty")


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
    error_shapes = ERROR_SHAPES

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/publish_events", lambda r: self._publish(r, "publish_events"), "publish_events"),
            Route("POST", "/publish_llm_events", lambda r: self._publish(r, "publish_llm_events"), "publish_llm_events"),
        ]

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        self.error_shape = "fastapi"
        super().__init__(record_items=record_items, base_url=base_url)

    def reset_state(self) -> None:
        self.error_shape = "fastapi"

    def validation_error(self, endpoint: str, message: str) -> Response:
        return self._refuse([{"loc": ["body"], "msg": message, "type": "value_error"}])

    def _refuse(self, problems: list[dict[str, Any]]) -> Response:
        """A 422 in the configured shape; every shape names the first problem."""
        first = problems[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else first["msg"]
        if self.error_shape == "message":
            return Response(422, {"message": message})
        if self.error_shape == "text":
            return Response(422, f"Unprocessable Entity: {message}".encode(), {"Content-Type": "text/plain"})
        if self.error_shape == "empty":
            return Response(422, b"", {"Content-Type": "text/plain"})
        return Response(422, {"detail": problems})

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
        if not body:  # no minItems in the document: an empty batch is a batch of nothing
            return Response(200, {"status": "success"})
        if len(body) > MAX_ITEMS:
            return self._refuse([{"loc": ["body"], "msg": f"ensure this value has at most {MAX_ITEMS} items",
                                  "type": "value_error.list.max_items"}])
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
        if problems:
            return self._refuse(problems)
        self.record(endpoint, body)
        return Response(200, {"status": "success"})


EMULATOR = TrubricsEmulator

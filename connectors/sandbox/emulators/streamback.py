"""StreamBack emulator: the SDK endpoints of ``streamback.md`` plus the presigned storage they point to.

Strict where the document is specific, so a client bug shows up as a refusal; lenient where it is silent,
so a test of a connector choice cannot agree with it by construction. Bodies are parsed with
:func:`~connectors.sandbox.base.strict_json` (NaN, Infinity, duplicate keys... are refused with 400
``VALIDATION_ERROR`` and counted in the endpoint's ``invalid_json``).

From the document:

- every ``/v1/sdk/*`` request needs ``X-API-Key`` (401 ``{"error": {"code": "UNAUTHORIZED", ...}}``);
- a feedback body is validated (400 ``VALIDATION_ERROR``): ``type`` in the documented list, ``emotion`` a
  number from 1 to 5, ``message`` (a string) unless ``emotion`` or ``surveyResponse`` is given, objects where
  objects are documented (``surveyResponse``, and ``snapshot``/``user`` as in the example);
- presigned URLs point into the sandbox (``{base_url}/_storage/<object key>?token=..``); a ``PUT`` needs
  the URL's token (403 otherwise, or once expired, as object storage answers) and stores the bytes;
- finalize: 404 for an unknown feedback; ``screenshotUploaded: true`` needs an ``objectKey`` issued for
  this feedback *and uploaded* (400 otherwise); a repeated finalize with the same key is idempotent (200),
  with another key 409 ``CONFLICT``.

Assumptions where the document is silent (each accepts every plausible variant):

- ``type`` is required (the table does not mark it Optional); ``triggerSource`` is not (its list is open,
  so any string is accepted, and a feedback without one too).
- ``emotion`` may be fractional (``number``); a blank ``message`` is a message; JSON ``null`` for an
  optional member is accepted; members of ``snapshot``, ``user`` and ``surveyResponse`` are not checked.
- Top-level fields the document does not list are accepted and stored, and counted in
  :attr:`unknown_fields` (so a test can prove the client never leaks a pseudo-field or a private column).
- ``POST /v1/sdk/upload-url`` takes any body (the document shows none); a ``feedbackId`` in it must name a
  known feedback (404 otherwise). The answer is the documented ``uploadUrl``/``fileUrl``/``expiresAt``.
- Finalize's ``objectKey`` may be the issued key (``screenshots/...``), the ``fileUrl`` the upload-url answer
  gave, or that URL's path: the document's example shows a key but the upload-url answer has none.
- Attachment presign needs ``filename``, a ``mimeType`` with a ``/`` and a whole ``sizeBytes`` >= 0 (as in
  the example); the ``PUT`` must carry exactly ``sizeBytes`` bytes (a presigned URL signs the length).
  A 0-byte upload is accepted.
- Presigned URLs expire after 15 minutes; there is no documented rate limit and none is applied.

Records (for tests): ``feedback`` (accepted bodies), ``uploads`` (one per PUT, with ``key``, ``bytes``,
``content_type`` and ``api_key_sent``), ``finalize`` (one per accepted finalize), ``attachments_presign``.
State: :attr:`feedback` (id -> stored feedback), :attr:`objects`, :attr:`upload_counts` (PUTs per key),
:attr:`unknown_fields`. Controls (``POST /_sandbox/control``): ``feedback`` (list stored feedback),
``upload_counts``, ``delete_feedback`` ``{"id"}`` (as if an operator deleted it; for reconcile tests).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from collections import Counter
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from connectors.sandbox.base import Emulator, Request, Response, Route

FEEDBACK_TYPES = ("bug", "suggestion", "praise", "question", "other")
FEEDBACK_FIELDS = {"message", "type", "emotion", "triggerSource", "surveyResponse", "snapshot", "user"}
URL_TTL_SECONDS = 900
CONFIG = {
    "display": {"trigger": "dot", "position": "right-center"},
    "triggers": {"onError": {"enabled": True}},
    "rewards": {"previewRange": {"min": 100, "max": 500}},
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}})


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()


class StreamBackEmulator(Emulator):
    vendor = "streamback"
    keys = {"api_key": "env_sandbox_streamback"}

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        self.feedback: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, bytes] = {}
        self.upload_counts: Counter[str] = Counter()
        self.unknown_fields: Counter[str] = Counter()  # top-level feedback fields the document does not list
        self._issued: dict[str, dict[str, Any]] = {}  # object key -> token, expiry, feedback id, size
        super().__init__(record_items=record_items, base_url=base_url)

    def routes(self) -> list[Route]:
        fid = r"(?P<id>[^/]+)"
        return [
            Route("POST", "/v1/sdk/feedback", self._submit, "feedback"),
            Route("POST", "/v1/sdk/upload-url", self._upload_url, "upload_url"),
            Route("POST", f"/v1/sdk/feedback/{fid}/finalize", self._finalize, "finalize"),
            Route("GET", f"/v1/sdk/feedback/{fid}/status", self._status, "status"),
            Route("POST", f"/v1/sdk/feedback/{fid}/attachments/presign", self._presign, "attachments_presign"),
            Route("GET", "/v1/sdk/config", self._config, "config"),
            Route("GET", "/v1/sdk/user/history", self._history, "user_history"),
            # Presigned storage takes the file's bytes, not JSON: never parsed (nor counted in invalid_json).
            Route("PUT", "/_storage/(?P<key>.+)", self._put, "storage", json_body=False),
            Route("GET", "/_storage/(?P<key>.+)", self._get_object, "storage_get", json_body=False),
        ]

    def reset_state(self) -> None:
        self.feedback.clear()
        self.objects.clear()
        self.upload_counts.clear()
        self.unknown_fields.clear()
        self._issued.clear()

    def validation_error(self, endpoint: str, message: str) -> Response:
        return _error(400, "VALIDATION_ERROR", message)

    def rate_limited(self, endpoint: str, retry_after: float) -> Response:
        response = _error(429, "RATE_LIMITED", "Too many requests")
        response.headers["Retry-After"] = str(max(1, round(retry_after + 0.5)))
        return response

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "feedback":
            return list(self.feedback.values())
        if action == "upload_counts":
            return dict(self.upload_counts)
        if action == "delete_feedback":
            return self.feedback.pop(str(args["id"]), None) is not None
        return super().control(action, args)

    # -- helpers -------------------------------------------------------------------------------------------
    def _unauthorized(self, request: Request) -> Response | None:
        if request.headers.get("x-api-key") != self.keys["api_key"]:
            return _error(401, "UNAUTHORIZED", "Invalid or missing API key")
        return None

    def _body(self, request: Request, *, optional: bool = False) -> dict[str, Any] | Response:
        if not request.body.strip() and optional:
            return {}
        try:
            body = request.json()
        except ValueError:
            return self.validation_error("", "request body is not valid JSON")
        if not isinstance(body, dict):
            return self.validation_error("", "request body must be a JSON object")
        return body

    def _issue(self, key: str, feedback_id: str | None, kind: str, size: int | None = None) -> str:
        token = secrets.token_hex(12)
        expires = time.time() + URL_TTL_SECONDS
        self._issued[key] = {"token": token, "expires": expires, "feedback_id": feedback_id, "kind": kind,
                             "size": size}
        return f"{self.base_url}/_storage/{quote(key)}?token={token}&expires={int(expires)}"

    # -- SDK endpoints -------------------------------------------------------------------------------------
    def _submit(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        body = self._body(request)
        if isinstance(body, Response):
            return body
        problem = self._feedback_problem(body)
        if problem:
            return self.validation_error("feedback", problem)
        with self.lock:
            self.unknown_fields.update(set(body) - FEEDBACK_FIELDS)
            feedback_id = f"fb_{secrets.token_hex(6)}"
            reward = 100 + 50 * (len(str(body.get("message") or "")) % 9)
            self.feedback[feedback_id] = {
                "id": feedback_id, "body": body, "finalized": False, "screenshotUploaded": None,
                "objectKey": None, "attachments": [], "status": "new", "creditAwarded": reward,
                "createdAt": _iso(time.time()),
            }
        self.record("feedback", [{"id": feedback_id, **body}])
        return Response(201, {"id": feedback_id, "message": "Feedback received", "rewardAmount": reward})

    @staticmethod
    def _feedback_problem(body: dict[str, Any]) -> str | None:
        if body.get("type") not in FEEDBACK_TYPES:
            return f"type must be one of {', '.join(FEEDBACK_TYPES)}"
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            return "message must be a string"
        emotion = body.get("emotion")
        if emotion is not None and (not _is_number(emotion) or not 1 <= emotion <= 5):
            return "emotion must be a number from 1 to 5"
        for name in ("surveyResponse", "snapshot", "user"):
            if body.get(name) is not None and not isinstance(body[name], dict):
                return f"{name} must be an object"
        if body.get("triggerSource") is not None and not isinstance(body["triggerSource"], str):
            return "triggerSource must be a string"
        if message is None and emotion is None and body.get("surveyResponse") is None:
            return "message is required unless emotion or surveyResponse is provided"
        return None

    def _upload_url(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        body = self._body(request, optional=True)
        if isinstance(body, Response):
            return body
        feedback_id = body.get("feedbackId")
        with self.lock:
            if feedback_id is not None and feedback_id not in self.feedback:
                return _error(404, "NOT_FOUND", f"feedback {feedback_id} not found")
            stem = str(feedback_id).removeprefix("fb_") if feedback_id else secrets.token_hex(6)
            key = f"screenshots/{stem}-{secrets.token_hex(3)}.png"
            upload_url = self._issue(key, feedback_id, "screenshot")
        return Response(200, {
            "uploadUrl": upload_url,
            "fileUrl": f"{self.base_url}/_storage/{key}",
            "expiresAt": _iso(self._issued[key]["expires"]),
        })

    def _finalize(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        body = self._body(request)
        if isinstance(body, Response):
            return body
        feedback_id = request.params["id"]
        with self.lock:
            stored = self.feedback.get(feedback_id)
            if stored is None:
                return _error(404, "NOT_FOUND", f"feedback {feedback_id} not found")
            uploaded = body.get("screenshotUploaded")
            if not isinstance(uploaded, bool):
                return self.validation_error("finalize", "screenshotUploaded must be true or false")
            key = self._issued_key(body.get("objectKey"))
            if uploaded:
                issued = self._issued.get(key) if isinstance(key, str) else None
                if issued is None or issued["kind"] != "screenshot" or issued["feedback_id"] not in (None, feedback_id):
                    return self.validation_error("finalize", f"objectKey {key!r} was not issued for this feedback")
                if key not in self.objects:
                    return self.validation_error("finalize", f"objectKey {key!r} was never uploaded")
            else:
                key = None
            if stored["finalized"]:
                if stored["objectKey"] != key:
                    return _error(409, "CONFLICT", f"feedback {feedback_id} is already finalized")
                return Response(200, {"feedbackId": feedback_id, "finalized": True})
            stored.update(finalized=True, screenshotUploaded=uploaded, objectKey=key)
        self.record("finalize", [{"id": feedback_id, "screenshotUploaded": uploaded, "objectKey": key}])
        return Response(200, {"feedbackId": feedback_id, "finalized": True})

    def _issued_key(self, given: Any) -> Any:
        """The object key a finalize names: the key itself, the ``fileUrl`` or its path (all accepted)."""
        if not isinstance(given, str) or given in self._issued:
            return given
        marker = "/_storage/"
        path = urlsplit(given).path if "://" in given else given
        if marker in path:
            return unquote(path.split(marker, 1)[1])
        return path.lstrip("/")

    def _status(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        with self.lock:
            stored = self.feedback.get(request.params["id"])
            if stored is None:
                return _error(404, "NOT_FOUND", f"feedback {request.params['id']} not found")
            return Response(200, {"feedbackId": stored["id"], "finalized": stored["finalized"],
                                  "status": stored["status"], "creditScore": 85})

    def _presign(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        body = self._body(request)
        if isinstance(body, Response):
            return body
        feedback_id = request.params["id"]
        filename, mime, size = body.get("filename"), body.get("mimeType"), body.get("sizeBytes")
        if not isinstance(filename, str) or not filename:
            return self.validation_error("attachments_presign", "filename is required")
        if not isinstance(mime, str) or "/" not in mime:
            return self.validation_error("attachments_presign", "mimeType must be a MIME type like video/webm")
        if not isinstance(size, int | float) or not _is_int(size) or size < 0:
            return self.validation_error("attachments_presign", "sizeBytes must be a non-negative integer")
        with self.lock:
            if feedback_id not in self.feedback:
                return _error(404, "NOT_FOUND", f"feedback {feedback_id} not found")
            key = f"attachments/{feedback_id.removeprefix('fb_')}-{secrets.token_hex(3)}-{_SAFE_NAME.sub('_', filename)}"
            upload_url = self._issue(key, feedback_id, "attachment", int(size))
        self.record("attachments_presign", [{"id": feedback_id, "filename": filename, "mimeType": mime,
                                             "sizeBytes": size, "objectKey": key}])
        return Response(200, {"uploadUrl": upload_url, "objectKey": key})

    def _config(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        return Response(200, CONFIG)

    def _history(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        user_id, email = request.arg("endUserId"), request.arg("endUserEmail")
        if not user_id and not email:
            return self.validation_error("user_history", "endUserId or endUserEmail is required")
        with self.lock:
            mine = [
                f for f in self.feedback.values()
                if (user_id and (f["body"].get("user") or {}).get("id") == user_id)
                or (email and (f["body"].get("user") or {}).get("email") == email)
            ]
        mine.sort(key=lambda f: f["createdAt"], reverse=True)
        days = sorted({f["createdAt"][:10] for f in mine}, reverse=True)
        streak = 0
        for i, day in enumerate(days):
            expected = dt.date.fromisoformat(days[0]) - dt.timedelta(days=i)
            if dt.date.fromisoformat(day) != expected:
                break
            streak += 1
        return Response(200, {
            "totalSubmissions": len(mine),
            "totalCreditsEarned": sum(f["creditAwarded"] for f in mine),
            "currentStreak": streak,
            "lastSubmissionDate": mine[0]["createdAt"] if mine else None,
            "recentFeedback": [
                {"id": f["id"], "type": f["body"].get("type"), "status": f["status"],
                 "creditAwarded": f["creditAwarded"], "createdAt": f["createdAt"]}
                for f in mine[:10]
            ],
        })

    # -- presigned storage -----------------------------------------------------------------------------------
    def _put(self, request: Request) -> Response:
        key = request.params["key"]
        with self.lock:
            issued = self._issued.get(key)
            if issued is None or request.arg("token") != issued["token"]:
                return Response(403, b"<Error><Code>AccessDenied</Code><Message>Invalid signature</Message></Error>",
                                {"Content-Type": "application/xml"})
            if time.time() > issued["expires"]:
                return Response(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                                {"Content-Type": "application/xml"})
            if issued["size"] is not None and issued["size"] != len(request.body):
                return Response(400, b"<Error><Code>BadDigest</Code><Message>size differs from sizeBytes</Message>"
                                     b"</Error>", {"Content-Type": "application/xml"})
            self.objects[key] = request.body
            self.upload_counts[key] += 1
            if issued["kind"] == "attachment":
                stored = self.feedback.get(issued["feedback_id"])
                if stored is not None and key not in stored["attachments"]:
                    stored["attachments"].append(key)
        self.record("uploads", [{
            "key": key, "bytes": len(request.body), "content_type": request.headers.get("content-type"),
            "api_key_sent": "x-api-key" in request.headers, "kind": issued["kind"],
        }])
        return Response(200, b"", {"ETag": f'"{secrets.token_hex(8)}"'})

    def _get_object(self, request: Request) -> Response:
        with self.lock:
            data = self.objects.get(request.params["key"])
        if data is None:
            return Response(404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"})
        return Response(200, data)


EMULATOR = StreamBackEmulator

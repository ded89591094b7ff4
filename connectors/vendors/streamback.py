"""StreamBack SDK API (``docs/vendor-api/streamback.md``): one feedback per request, plus files.

``POST /v1/sdk/feedback`` answers 201 ``{"id": "fb_..."}``; a screenshot is ``POST /v1/sdk/upload-url`` ->
``PUT`` the bytes to the presigned ``uploadUrl`` -> ``POST /v1/sdk/feedback/:id/finalize``; an attachment
is ``POST /v1/sdk/feedback/:id/attachments/presign`` -> ``PUT``. Auth is ``X-API-Key``; errors are
``{"error": {"code", "message"}}``. There is no idempotency key, so the feedback id is saved to the ledger
the moment the 201 arrives, and every finished step after it is recorded in the item's progress: a rerun
resumes an item at the step that failed and never submits the same feedback twice nor re-uploads a file
that already landed.

The ``feedback`` endpoint is multi-step (``steps=True``, one item per request). Payload fields are the
documented body (``message``, ``type``, ``emotion``, ``triggerSource``, ``surveyResponse``, ``snapshot``,
``user``) plus two pseudo-fields that are never sent in the body but drive the extra steps:

- ``screenshot_path``: a local file uploaded as the feedback's screenshot, then finalized;
- ``attachments``: a list of local file paths, each presigned and uploaded as an attachment.

What is checked before sending, and where it comes from (every Field and Rule declares its ``basis``;
``docs/vendors.md`` lists them). Checked by default, because the document says so:

- ``type`` is required and one of ``bug, suggestion, praise, question, other`` (the Submit Feedback table
  lists those values and, unlike ``emotion`` and ``surveyResponse``, does not mark ``type`` Optional);
- ``emotion`` is a number from 1 to 5 ("1-5 emotion rating (1=Awful, 5=Great). Optional");
- ``message`` is required when neither ``emotion`` nor ``surveyResponse`` is given ("optional if
  emotion/survey provided"); ``surveyResponse``, ``snapshot`` and ``user`` are objects.

Text goes out as the model wrote it: syncline never trims a ``message`` (or anything else), and a blank
``message`` is a message (the document does not say otherwise). The feedback POST body is the item's JSON as
the payload encoded it, less the two pseudo-fields: strings in UTF-8, JSON columns (``surveyResponse``,
``snapshot``, ``user``) byte for byte as the model wrote them.

Normalizations, per field (the only ones):

- ``screenshot_path`` (a pseudo-field, never sent): NULL, an empty text or a whitespace-only text all mean
  "no screenshot" (a *choice*: the document has no such field; an empty path in a warehouse row means the
  feedback had none, and a path of spaces names no file anyone meant). Any other text is used as written,
  never trimmed (``" a.png"`` names the file ``" a.png"``).
- ``attachments`` (a pseudo-field, never sent): entries that are NULL, empty or whitespace-only are skipped
  (the same choice), and a path listed twice is uploaded once; others are used as written.

Native key: the document has no idempotency or dedup field for any StreamBack endpoint, so there is none to
declare or to take from the model (``idempotency_field`` is unset); lost answers are handled by the history
look-up below (``dedup="read_back"``).

Choices where the document is silent (options under ``destination.options`` are named); checks marked
*opt-in* run only when the sync sets ``strict: true`` or names them in ``strict: [...]``:

- Opt-in ``message_not_blank``: reject an empty or whitespace-only ``message``.
- Opt-in ``emotion_whole_number``: reject a fractional ``emotion`` (the document says ``number``; its scale
  labels five points, 1=Awful .. 5=Great).
- Opt-in ``trigger_source_required``: the table does not mark ``triggerSource`` Optional either, but its list
  is open ("and related types") and the SDK sets it from the trigger, so it is not required by default.
- An empty or whitespace-only ``screenshot_path`` means "no screenshot" (see Normalizations above): the
  feedback is delivered without one (and, with ``finalize: screenshot``, not finalized). Empty entries of
  ``attachments`` are skipped likewise.
- File paths: relative paths are resolved against the files root, which is ``$SYNCLINE_HOME`` unless
  ``files_root`` says otherwise; a path that resolves outside the root (``/etc/...``, ``../..``) is refused,
  so a warehouse row can never make syncline upload an arbitrary file of the machine it runs on. A missing
  file is refused before anything is sent (no feedback is created for it). An empty (0-byte) file is
  uploaded as it is (the document sets no minimum); ``empty_files: reject`` refuses it instead.
- The upload-url request carries ``{"feedbackId", "contentType"}`` (the document shows no body; the key in
  its finalize example, ``screenshots/abc123.png``, follows the feedback id). The response has no
  ``objectKey``: it is taken from the response when present, else from the path of ``fileUrl``.
- Presigned URLs are never stored in the ledger (they are short-lived write capabilities and the ledger
  holds nothing secret): a rerun that finds the upload unfinished asks for a fresh URL. Only object keys of
  finished uploads are recorded. The ``PUT`` carries no API key, only ``Content-Type``.
- Attachments are uploaded before finalize, so a feedback is finalized only once all its files landed.
  Attachment MIME types are guessed from the file name (``application/octet-stream`` when unknown).
- ``finalize``: ``screenshot`` (default) finalizes only feedback that has a screenshot, as the document
  describes; ``always`` also finalizes the others with ``{"screenshotUploaded": false}``.
- ``verify`` (default true): after finalize, ``GET .../status`` must say ``finalized: true``, else the item
  is ``in_doubt`` and the next run finalizes it again. A finalize answered 409 is taken as "already
  finalized" when the status confirms it.
- A 400 on any step is a permanent refusal (the item is rejected with the vendor's message); when the
  feedback already exists the reason says so and names its id. A 404/405 on the feedback POST means a wrong
  base URL and stops the sync. A 2xx without an ``id`` leaves the item ``in_doubt``.
- A feedback POST whose outcome is unknown (a timeout or dropped connection after sending, or a 5xx, or a
  crash between the POST and saving its id) is never resent blindly. The time of every POST is saved to
  the item's progress before it leaves; before POSTing again, the end user's history
  (``GET /v1/sdk/user/history`` by ``user.id``/``user.email``) is read: one feedback of the same ``type``
  created since that time (less ``lookup_skew`` seconds, default 300, for clock differences) is taken as
  ours and its id saved; none means it was not stored, and it is sent again; several leave the item
  ``in_doubt`` for a person (``syncline resolve``). A row without a user cannot be looked up: the sync's
  ``delivery.in_doubt`` decides (``resend`` counts the resend as a possible duplicate; ``hold`` keeps it).
  Assumption (the document is silent): ``recentFeedback`` lists the user's latest feedback, ours included.
- No rate limit is documented: none is applied; 429 and ``Retry-After`` are honoured on every step.
- ``mirror`` mode cannot update a feedback (there is no update API): an item whose progress holds a
  feedback id is never sent again.

Read API wrappers (:func:`get_config`, :func:`get_user_history`, :func:`get_feedback_status`,
:func:`verify_feedback`) take a run's :class:`~connectors.engine.sender.Sender`. There is no list API, so
:meth:`FeedbackEndpoint.reconcile` checks the status of every feedback id the ledger holds for the window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode, urlsplit

from connectors import settings
from connectors.engine.endpoint import Credential, Endpoint, Field, HttpResponse, Rule, Vendor, not_blank
from connectors.engine.sender import GiveUp, ItemContext, ItemRejected, Sender
from connectors.errors import SynclineError, SyncStopped

FEEDBACK_TYPES = ("bug", "suggestion", "praise", "question", "other")
PSEUDO_FIELDS = ("screenshot_path", "attachments")
FEEDBACK_PATH = "/v1/sdk/feedback"
FEEDBACK_DOC = "doc: Submit Feedback (POST /v1/sdk/feedback), request body table"
MAX_RECONCILE_ITEMS = 1_000_000


class StreamBackError(SynclineError):
    """A read request (config, history, status) was refused; the message carries the vendor's reason."""


def describe_error(response: HttpResponse) -> str:
    """``HTTP 400 VALIDATION_ERROR: <message>`` from the documented ``{error: {code, message}}`` body."""
    body = response.json()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code") or ""
            message = error.get("message") or ""
            return f"HTTP {response.status} {code}: {message}".replace(" : ", ": ").strip(": ")
        if isinstance(error, str):
            return f"HTTP {response.status}: {error}"
    return f"HTTP {response.status}: {response.excerpt(200)}"


@dataclasses.dataclass(frozen=True)
class _File:
    given: str  # the path as the row gave it (the progress key)
    path: Path  # resolved, inside the files root


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeedbackEndpoint(Endpoint):
    """``POST /v1/sdk/feedback`` and the screenshot/attachment steps around it."""

    files_root: str | None = None  # None: $SYNCLINE_HOME, read at send time
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "files_root": "the folder uploaded files must be in (default $SYNCLINE_HOME); paths outside are refused",
        "finalize": "screenshot (default: finalize feedback that has one) or always",
        "verify": "check the feedback's status after finalize (default true)",
        "lookup_skew": "seconds of clock difference allowed when the user's history is searched for a lost POST (default 300)",
        "empty_files": "upload (default: a 0-byte file is uploaded as it is) or reject (refuse the row)",
    }
    finalize: Literal["screenshot", "always"] = "screenshot"
    verify: bool = True
    lookup_skew: float = 300.0  # seconds: how much earlier than our POST a matching feedback may be dated
    empty_files: Literal["upload", "reject"] = "upload"

    # --- engine hooks ---------------------------------------------------------------------------------
    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"X-API-Key": credentials["api_key"]}

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        changes: dict[str, Any] = {}
        for name, value in options.items():
            if name == "files_root":
                if not isinstance(value, str) or not value.strip():
                    raise ValueError("files_root: a folder path is required")
                changes[name] = value
            elif name == "finalize":
                if value not in ("screenshot", "always"):
                    raise ValueError("finalize: must be screenshot (only feedback with a screenshot) or always")
                changes[name] = value
            elif name == "verify":
                if not isinstance(value, bool):
                    raise ValueError("verify: must be true or false")
                changes[name] = value
            elif name == "empty_files":
                if value not in ("upload", "reject"):
                    raise ValueError("empty_files: must be upload (send a 0-byte file as it is) or reject")
                changes[name] = value
            elif name == "lookup_skew":
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise ValueError("lookup_skew: a number of seconds (0 or more)")
                changes[name] = float(value)
            else:
                raise ValueError(f"{name}: unknown option (known: {', '.join(self.OPTIONS)})")
        return dataclasses.replace(self, **changes) if changes else self

    def error_reason(self, response: HttpResponse) -> str:
        return f"StreamBack refused the request ({describe_error(response)})"

    def deliver_item(self, ctx: ItemContext) -> str | None:
        payload, progress = ctx.payload, ctx.progress
        feedback_id: str | None = progress.get("feedback_id")
        has_screenshot = _given_path(payload.get("screenshot_path")) is not None  # "" means no screenshot
        # Files are checked before the feedback exists, so a missing file never leaves a half-made feedback;
        # on a resumed item only the files still to upload are checked.
        screenshot, attachments = self._pending_files(payload, progress, feedback_id)
        if feedback_id is None:
            body = {k: v for k, v in payload.items() if k not in PSEUDO_FIELDS}
            feedback_id = self._submit(ctx, body, _without_members(ctx.item.payload, PSEUDO_FIELDS))
        if screenshot is not None:
            self._upload_screenshot(ctx, feedback_id, screenshot)
        progress.setdefault("attachments", {})
        for file in attachments:
            self._upload_attachment(ctx, feedback_id, file)
        if (has_screenshot or self.finalize == "always") and not progress.get("finalized"):
            self._finalize(ctx, feedback_id)
        return feedback_id

    # --- steps -----------------------------------------------------------------------------------------
    def _submit(self, ctx: ItemContext, body: dict[str, Any], raw: bytes) -> str:
        # No idempotency key: a POST that may have landed is never resent before the user's history says
        # it did not (see the module docstring). ``raw`` is ``body`` as the payload encoded it (sent as is).
        for _round in range(2):
            if ctx.progress.get("submitted_at"):
                found = self._look_up(ctx, body)
                if found is not None:
                    return found
            ctx.progress["submitted_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            ctx.save()
            try:
                response = ctx.call("POST", FEEDBACK_PATH, step="feedback", body=raw, idempotent=False)
            except GiveUp as give_up:
                if not give_up.maybe_sent or not _user_of(body):
                    raise
                continue  # look the user's history up, then send again only if it is not there
            return self._accepted(ctx, response)
        raise GiveUp("StreamBack's answer to the feedback POST was lost twice, and the user's history does not "
                     "show it", maybe_sent=True)

    def _look_up(self, ctx: ItemContext, body: Mapping[str, Any]) -> str | None:
        """The id of our earlier POST of this item in the user's history, or None when it is not there
        (then the caller POSTs). Raises GiveUp (in doubt) when it cannot tell."""
        user = _user_of(body)
        if not user:
            if ctx.sender.in_doubt == "hold":
                raise GiveUp("an earlier POST of this feedback may have landed; the row has no user to look up, "
                             "and delivery.in_doubt is hold", maybe_sent=True)
            ctx.count_resend()
            return None
        history = get_user_history(ctx.sender, end_user_id=user.get("id"), end_user_email=user.get("email"))
        since = _parse_time(ctx.progress["submitted_at"])
        assert since is not None
        earliest = since - dt.timedelta(seconds=self.lookup_skew)
        candidates = [
            f for f in (history or {}).get("recentFeedback") or []
            if isinstance(f, dict) and f.get("type") == body.get("type") and isinstance(f.get("id"), str)
            and (created := _safe_time(f.get("createdAt"))) is not None and created >= earliest
        ]
        if len(candidates) > 1:
            raise GiveUp(f"an earlier POST of this feedback may have landed and the user's history holds "
                         f"{len(candidates)} candidates ({', '.join(c['id'] for c in candidates[:5])}): resolve by hand",
                         maybe_sent=True)
        if not candidates:
            return None
        feedback_id = str(candidates[0]["id"])
        ctx.progress["feedback_id"] = feedback_id
        ctx.progress["found_by_lookup"] = True
        ctx.save(vendor_id=feedback_id)
        return feedback_id

    def _accepted(self, ctx: ItemContext, response: HttpResponse) -> str:
        if response.status in (404, 405):
            raise SyncStopped(
                f"{self.qualified_name} answered HTTP {response.status} on POST {FEEDBACK_PATH}: "
                "check STREAMBACK_BASE_URL"
            )
        if not 200 <= response.status < 300:
            raise ItemRejected(self._refusal(response, "feedback", None))
        answer = response.json()
        feedback_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(feedback_id, str) or not feedback_id:
            raise GiveUp(f"StreamBack answered HTTP {response.status} without a feedback id", maybe_sent=True)
        # Saved before anything else happens: a crash from here on resumes with this id, never re-submits.
        ctx.progress["feedback_id"] = feedback_id
        ctx.save(vendor_id=feedback_id)
        return feedback_id

    def _upload_screenshot(self, ctx: ItemContext, feedback_id: str, file: _File) -> None:
        content_type = _content_type(file.path, default="image/png")
        response = ctx.call(
            "POST", "/v1/sdk/upload-url", step="upload_url",
            json_body={"feedbackId": feedback_id, "contentType": content_type},
        )
        if not 200 <= response.status < 300:
            raise ItemRejected(self._refusal(response, "upload_url", feedback_id))
        answer = response.json()
        upload_url = answer.get("uploadUrl") if isinstance(answer, dict) else None
        object_key = _object_key(answer) if isinstance(answer, dict) else None
        if not isinstance(upload_url, str) or not object_key:
            raise GiveUp("StreamBack upload-url answer lacks uploadUrl or a file URL", maybe_sent=False)
        self._put(ctx, "upload", upload_url, _read_file(file, feedback_id), content_type, feedback_id)
        ctx.progress["screenshot_key"] = object_key
        ctx.save()

    def _upload_attachment(self, ctx: ItemContext, feedback_id: str, file: _File) -> None:
        content_type = _content_type(file.path, default="application/octet-stream")
        data = _read_file(file, feedback_id)  # read once: sizeBytes must match the bytes PUT
        response = ctx.call(
            "POST", f"{FEEDBACK_PATH}/{quote(feedback_id, safe='')}/attachments/presign", step="attachment_presign",
            json_body={"filename": file.path.name, "mimeType": content_type, "sizeBytes": len(data)},
        )
        if not 200 <= response.status < 300:
            raise ItemRejected(self._refusal(response, "attachment_presign", feedback_id))
        answer = response.json()
        upload_url = answer.get("uploadUrl") if isinstance(answer, dict) else None
        object_key = answer.get("objectKey") if isinstance(answer, dict) else None
        if not isinstance(upload_url, str) or not isinstance(object_key, str):
            raise GiveUp("StreamBack attachment presign answer lacks uploadUrl or objectKey", maybe_sent=False)
        self._put(ctx, "attachment_upload", upload_url, data, content_type, feedback_id)
        ctx.progress["attachments"][file.given] = object_key
        ctx.save()

    def _put(self, ctx: ItemContext, step: str, url: str, data: bytes, content_type: str, feedback_id: str) -> None:
        """PUT bytes to a presigned URL: no API key, and the URL (a write capability) never logged."""
        response = ctx.call(
            "PUT", "(presigned upload URL)", step=step, body=data, headers={"Content-Type": content_type},
            absolute_url=url, limited=False,
        )
        if not 200 <= response.status < 300:
            raise ItemRejected(self._refusal(response, step, feedback_id))

    def _finalize(self, ctx: ItemContext, feedback_id: str) -> None:
        object_key = ctx.progress.get("screenshot_key")
        body: dict[str, Any] = {"screenshotUploaded": bool(object_key)}
        if object_key:
            body["objectKey"] = object_key
        path = f"{FEEDBACK_PATH}/{quote(feedback_id, safe='')}"
        response = ctx.call("POST", f"{path}/finalize", step="finalize", json_body=body)
        if response.status != 409 and not 200 <= response.status < 300:
            raise ItemRejected(self._refusal(response, "finalize", feedback_id))
        if response.status == 409 or self.verify:
            status = ctx.call("GET", f"{path}/status", step="status")
            answer = status.json() if 200 <= status.status < 300 else None
            if not isinstance(answer, dict) or answer.get("finalized") is not True:
                seen = f"finalized={answer.get('finalized')!r}" if isinstance(answer, dict) else describe_error(status)
                raise GiveUp(
                    f"StreamBack does not report feedback {feedback_id} finalized after finalize ({seen}); "
                    "the next run finalizes it again",
                    maybe_sent=True,
                )
        ctx.progress["finalized"] = True
        ctx.save()

    def _refusal(self, response: HttpResponse, step: str, feedback_id: str | None) -> str:
        reason = describe_error(response)
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if response.status == 400 and isinstance(error, dict) and error.get("message"):
            reason = f"{error.get('code') or 'VALIDATION_ERROR'}: {error['message']}"
        where = "StreamBack refused the feedback" if step == "feedback" else f"StreamBack refused step {step}"
        text = f"{where} ({reason})"
        if feedback_id is not None and response.status == 404:
            text += f"; StreamBack no longer knows feedback {feedback_id}"
        elif feedback_id is not None:
            text += f"; feedback {feedback_id} exists, a rerun resumes at this step"
        return text

    # --- files -----------------------------------------------------------------------------------------
    def root(self) -> Path:
        """The folder every uploaded file must live in (``files_root``, default ``$SYNCLINE_HOME``)."""
        home = settings.home()
        if self.files_root is None:
            return home
        given = Path(os.path.expandvars(os.path.expanduser(self.files_root)))
        return (given if given.is_absolute() else home / given).resolve()

    def files_of(
        self, payload: Mapping[str, Any], root: Path, *, skip_screenshot: bool = False,
        skip: frozenset[str] | set[str] = frozenset(),
    ) -> tuple[_File | None, list[_File]]:
        """The screenshot and attachments of a payload still to upload (``skip``: already uploaded), checked;
        raises ItemRejected with a clear reason."""
        screenshot = None
        raw = payload.get("screenshot_path")
        if raw is not None and not isinstance(raw, str):
            raise ItemRejected("screenshot_path must be a file path")
        given = _given_path(raw)
        reject_empty = self.empty_files == "reject"
        if given is not None and not skip_screenshot:
            screenshot = _checked_file("screenshot_path", given, root, reject_empty=reject_empty)
        attachments: list[_File] = []
        listed = payload.get("attachments")
        if listed is not None:
            if not isinstance(listed, list) or not all(p is None or isinstance(p, str) for p in listed):
                raise ItemRejected("attachments must be a list of file paths")
            paths = [p for p in (_given_path(p) for p in listed) if p is not None]  # empty entries: no file
            attachments = [_checked_file("attachments", p, root, reject_empty=reject_empty)
                           for p in dict.fromkeys(paths) if p not in skip]
        return screenshot, attachments

    def _pending_files(
        self, payload: Mapping[str, Any], progress: Mapping[str, Any], feedback_id: str | None
    ) -> tuple[_File | None, list[_File]]:
        try:
            screenshot, attachments = self.files_of(
                payload, self.root(), skip_screenshot=bool(progress.get("screenshot_key")),
                skip=set(progress.get("attachments") or {}),
            )
        except ItemRejected as exc:
            if feedback_id is None:
                raise
            raise ItemRejected(f"{exc}; feedback {feedback_id} exists, a rerun resumes once the file is back") from None
        return screenshot, attachments

    # --- read-back ---------------------------------------------------------------------------------------
    def reconcile(
        self, ctx: Any, *, sync: str, window_start: str | None, window_end: str | None, delivered: int
    ) -> dict[str, Any]:
        """Check, id by id, that every feedback the ledger delivered in the window exists (and is finalized
        when the run finalized it). There is no list API, so ids come from the ledger: the Sender's
        ``progress_store`` when it is a ledger (as the CLI passes it), else :func:`open_ledger`."""
        items = _ledger_items(ctx, sync)
        start, end = _parse_time(window_start), _parse_time(window_end)
        in_window = [i for i in items if _cursor_in(i.get("cursor"), start, end)]
        expected_final = {i["vendor_id"] for i in in_window if i.get("vendor_id") and _progress(i).get("finalized")}
        ids = [str(i["vendor_id"]) for i in in_window if i.get("vendor_id")]
        found = verify_feedback(ctx, ids)
        present = [fid for fid, status in found.items() if status is not None]
        missing = [fid for fid, status in found.items() if status is None]
        not_finalized = [
            fid for fid in expected_final if (found.get(fid) or {}).get("finalized") is not True and fid not in missing
        ]
        without_id = len(in_window) - len(ids)
        difference = delivered - len(present)
        return {
            "vendor_count": len(present),
            "ledger_count": delivered,
            "difference": difference,
            "matches": difference == 0 and not missing and not not_finalized and without_id == 0,
            "checked_ids": len(ids),
            "missing_ids": missing[:50],
            "not_finalized_ids": sorted(not_finalized)[:50],
            "delivered_without_vendor_id": without_id,
            "method": "GET /v1/sdk/feedback/:id/status for each feedback id in the ledger (no list API)",
        }


# --- read API wrappers -------------------------------------------------------------------------------------
def api_headers(sender: Sender) -> dict[str, str]:
    """``request_once`` sends no credential unless told: the X-API-Key of the sender's credentials."""
    return {"X-API-Key": sender.credentials["api_key"]}


def _read(sender: Sender, path: str, label: str) -> HttpResponse:
    response = sender.request_once("GET", path, label=label, headers=api_headers(sender))
    if response.status != 404 and not 200 <= response.status < 300:
        raise StreamBackError(f"StreamBack GET {path.split('?')[0]} failed ({describe_error(response)})")
    return response


def get_config(sender: Sender) -> dict[str, Any]:
    """``GET /v1/sdk/config``: the server-driven feedback layer configuration."""
    response = _read(sender, "/v1/sdk/config", "config")
    if response.status == 404:
        raise StreamBackError("StreamBack GET /v1/sdk/config answered 404: check STREAMBACK_BASE_URL")
    body = response.json()
    return body if isinstance(body, dict) else {}


def get_user_history(
    sender: Sender, *, end_user_id: str | None = None, end_user_email: str | None = None
) -> dict[str, Any] | None:
    """``GET /v1/sdk/user/history`` for an end user (by id, email or both); None when StreamBack knows none."""
    if not end_user_id and not end_user_email:
        raise ValueError("give end_user_id or end_user_email")
    query = {k: v for k, v in (("endUserId", end_user_id), ("endUserEmail", end_user_email)) if v}
    response = _read(sender, f"/v1/sdk/user/history?{urlencode(query)}", "user_history")
    body = response.json()
    return body if response.status != 404 and isinstance(body, dict) else None


def get_feedback_status(sender: Sender, feedback_id: str) -> dict[str, Any] | None:
    """``GET /v1/sdk/feedback/:id/status``; None when the feedback does not exist (404)."""
    response = _read(sender, f"{FEEDBACK_PATH}/{quote(feedback_id, safe='')}/status", "feedback_status")
    body = response.json()
    return body if response.status != 404 and isinstance(body, dict) else None


def verify_feedback(sender: Sender, ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """Status of each feedback id (None for one StreamBack does not know). One request per id."""
    return {fid: get_feedback_status(sender, fid) for fid in dict.fromkeys(ids)}


# --- helpers -------------------------------------------------------------------------------------------------
def _user_of(body: Mapping[str, Any]) -> dict[str, str]:
    """The end user's id and email (what the history lookup takes), when the row has them."""
    user = body.get("user")
    if not isinstance(user, dict):
        return {}
    return {k: str(user[k]) for k in ("id", "email") if isinstance(user.get(k), str | int) and str(user[k])}


def _without_members(payload: bytes, names: Sequence[str]) -> bytes:
    """The item's JSON object exactly as the payload encoded it (the model's values byte for byte: strings in
    UTF-8, JSON columns as written), less the top-level members ``names`` (the pseudo-fields)."""
    text = payload.decode("utf-8")
    decoder = json.JSONDecoder()
    kept: list[str] = []
    at = text.index("{") + 1
    while True:
        while text[at] in " \t\r\n,":
            at += 1
        if text[at] == "}":
            break
        name, colon = decoder.raw_decode(text, at)
        start = text.index(":", colon) + 1
        while text[start] in " \t\r\n":
            start += 1
        _, end = decoder.raw_decode(text, start)
        if name not in names:
            kept.append(text[at:end])
        at = end
    return ("{" + ",".join(kept) + "}").encode("utf-8")


def _given_path(value: Any) -> str | None:
    """A file path as the row gave it, or None for no file (NULL, or an empty or whitespace-only text)."""
    return value if isinstance(value, str) and value.strip() else None


def _checked_file(field: str, given: str, root: Path, *, reject_empty: bool = False) -> _File:
    raw = Path(os.path.expanduser(given))
    path = (raw if raw.is_absolute() else root / raw).resolve()
    if not path.is_relative_to(root):
        raise ItemRejected(
            f"{field} {given} is outside the files root {root} (set destination.options.files_root to allow it)"
        )
    if not path.is_file():
        raise ItemRejected(f"{field} file not found: {given}")
    if reject_empty and path.stat().st_size == 0:
        raise ItemRejected(f"{field} file is empty: {given} (destination.options.empty_files: reject)")
    return _File(given, path)


def _read_file(file: _File, feedback_id: str) -> bytes:
    try:
        return file.path.read_bytes()
    except OSError as exc:
        raise ItemRejected(
            f"cannot read {file.given} ({exc.__class__.__name__}); feedback {feedback_id} exists, "
            "a rerun resumes at this upload"
        ) from None


def _content_type(path: Path, default: str) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or default


def _object_key(answer: Mapping[str, Any]) -> str | None:
    """The screenshot's object key: ``objectKey`` if StreamBack sends one, else the path of ``fileUrl``."""
    key = answer.get("objectKey")
    if isinstance(key, str) and key:
        return key
    file_url = answer.get("fileUrl")
    if not isinstance(file_url, str) or not file_url:
        return None
    path = urlsplit(file_url).path.lstrip("/")
    marker = path.find("screenshots/")
    return path[marker:] if marker >= 0 else path or None


def _ledger_items(sender: Any, sync: str) -> list[dict[str, Any]]:
    store = getattr(sender, "progress_store", None)
    if store is not None and hasattr(store, "items"):
        return list(store.items(sync, state="delivered", limit=MAX_RECONCILE_ITEMS))
    from connectors.ledger import open_ledger

    ledger = open_ledger()
    try:
        return ledger.items(sync, state="delivered", limit=MAX_RECONCILE_ITEMS)
    finally:
        ledger.close()


def _progress(item: Mapping[str, Any]) -> dict[str, Any]:
    import json

    try:
        value = json.loads(item.get("progress") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    at = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def _safe_time(value: Any) -> dt.datetime | None:
    """A vendor's timestamp, or None when it is missing or not ISO 8601 (never an exception)."""
    try:
        return _parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _cursor_in(cursor: str | None, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    if start is None and end is None:
        return True
    at = _parse_time(cursor)
    if at is None:
        return False
    return (start is None or at >= start) and (end is None or at < end)


FEEDBACK = FeedbackEndpoint(
    vendor="streamback",
    name="feedback",
    path=FEEDBACK_PATH,
    description=(
        "One feedback item per row (message, type, emotion, survey answer, page snapshot, user), with an "
        "optional screenshot (upload-url -> PUT -> finalize) and attachments (presign -> PUT)."
    ),
    fields=(
        Field(
            "message", "string",
            required_when='emotion IS NULL AND "surveyResponse" IS NULL',
            required_because="when neither emotion nor surveyResponse is given",
            basis=f"{FEEDBACK_DOC}: `message | string | Feedback text (optional if emotion/survey provided)`",
        ),
        Field("type", "string", required=True, choices=FEEDBACK_TYPES,
              basis=f"{FEEDBACK_DOC}: `type | string | bug, suggestion, praise, question, other` (not marked "
              "Optional, unlike emotion and surveyResponse)"),
        Field("emotion", "number", min_value=1, max_value=5,
              basis=f"{FEEDBACK_DOC}: `emotion | number | 1-5 emotion rating (1=Awful, 5=Great). Optional`"),
        Field("triggerSource", "string",
              basis=f"{FEEDBACK_DOC}: `triggerSource | string | Trigger context: manual, error, frustration, idle, "
              "exitIntent, survey, and related types` (an open list)"),
        Field("surveyResponse", "object",
              basis=f"{FEEDBACK_DOC}: `surveyResponse | object | Micro-survey answer data. Optional`"),
        Field("snapshot", "object",
              basis=f"{FEEDBACK_DOC}: the request body example's `snapshot` object (url, route, viewportWidth, "
              "viewportHeight, userAgent)"),
        Field("user", "object", basis=f"{FEEDBACK_DOC}: the request body example's `user` object (id, email)"),
        # Pseudo-fields: never sent in the body; they drive the documented upload steps.
        Field("screenshot_path", "string",
              basis="doc: `Get Upload URL` (`Get a presigned URL for screenshot upload.`) and `Finalize "
              "Feedback`; a syncline pseudo-field naming a local file, never sent. Choice: NULL, empty or "
              "whitespace-only means no screenshot (the document has no such field)"),
        Field("attachments", "array",
              basis="doc: `Get Attachment Upload URL` (`POST /v1/sdk/feedback/:id/attachments/presign`); a "
              "syncline pseudo-field: a list of local file paths, never sent. Choice: NULL, empty or "
              "whitespace-only entries are skipped"),
    ),
    rules=(
        not_blank("message", basis="choice: the document does not forbid an empty message; a blank one is "
                  "usually a form submitted by accident"),
        Rule(
            when="emotion IS NOT NULL AND TRY_CAST(emotion AS DOUBLE) IS NOT NULL "
            "AND TRY_CAST(emotion AS DOUBLE) <> round(TRY_CAST(emotion AS DOUBLE))",
            reason="'emotion must be a whole number, got ' || CAST(emotion AS VARCHAR)",
            name="emotion_whole_number",
            field="emotion",
            basis="choice: the document says `number`; its scale labels five points (1=Awful, 5=Great)",
            opt_in=True,
        ),
        Rule(
            when='"triggerSource" IS NULL',
            reason="'triggerSource is missing'",
            name="trigger_source_required",
            field="triggerSource",
            basis="choice: the table does not mark triggerSource Optional, but its list is open (\"and related "
            "types\") and the SDK fills it in from the trigger",
            opt_in=True,
        ),
    ),
    max_items=1,
    steps=True,
    never_sent=PSEUDO_FIELDS,
    dedup="read_back",
)

VENDOR = Vendor(
    name="streamback",
    title="StreamBack",
    env_prefix="STREAMBACK",
    default_base_url="https://api.streamback.tech",
    credentials=(Credential("api_key", "STREAMBACK_API_KEY"),),
    endpoints={FEEDBACK.name: FEEDBACK},
)

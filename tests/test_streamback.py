"""StreamBack over real HTTP against the sandbox: feedback, validation, screenshots, attachments, auth,
retries on every step, crash-and-resume without duplicates, read API wrappers and reconcile."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connectors.errors import ConfigError
from connectors.ledger import open_ledger
from connectors.runner import make_sender, resolve_base_url, resolve_credentials, run_sync
from connectors.sandbox import Fault, Sandbox
from connectors.sandbox.emulators.streamback import StreamBackEmulator
from connectors.spec import SyncSpec, load_sync_file
from connectors.vendors.streamback import (
    get_config,
    get_feedback_status,
    get_user_history,
    verify_feedback,
)
from pipelines.sample_data import streamback as sample

REPO = Path(__file__).resolve().parent.parent
FAST = "backoff_base: 0.01, backoff_cap: 0.05, max_retry_after: 5"

SYNC = """
    source: {table: analytics.fb, key: id, cursor: sent_at}
    destination: {vendor: streamback, endpoint: feedback%s}
    delivery: {%s}
"""
SQL = """
    SELECT _key, _cursor, message, kind AS type, emotion, 'manual' AS triggerSource,
           CASE WHEN survey IS NOT NULL THEN {'surveyId': 'checkout-ease', 'answer': survey} END AS surveyResponse,
           {'url': 'https://app.example.com/checkout', 'route': '/checkout'} AS snapshot,
           {'id': user_id, 'email': email} AS "user",
           screenshot AS screenshot_path, files AS attachments
    FROM source
"""
ROW = {"message": "Checkout is broken", "kind": "bug", "emotion": None, "survey": None, "user_id": "u1",
       "email": "u1@example.com", "screenshot": None, "files": None}


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]::VARCHAR[]"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """``analytics.fb`` with one row per key; each row overrides :data:`ROW`; a minute apart from 2026-06-01."""
    values = []
    for n, (key, overrides) in enumerate(rows.items()):
        row = {**ROW, **overrides}
        at = f"TIMESTAMPTZ '2026-06-01 00:00:00+00' + INTERVAL {n * 90} MINUTE"
        values.append("(" + ", ".join([_literal(key), at, *(_literal(row[c]) for c in ROW)]) + ")")
    return [
        "CREATE OR REPLACE TABLE analytics.fb (id VARCHAR, sent_at TIMESTAMPTZ, message VARCHAR, kind VARCHAR, emotion DOUBLE, "
        "survey INTEGER, user_id VARCHAR, email VARCHAR, screenshot VARCHAR, files VARCHAR[])",
        "INSERT INTO analytics.fb VALUES " + ", ".join(values),
    ]


@pytest.fixture
def feedback_sync(warehouse, write_sync):
    """Build ``analytics.fb`` from rows and write the sync (options and delivery overridable)."""

    def make(rows: dict[str, dict[str, Any]], options: str = "", delivery: str = FAST) -> SyncSpec:
        warehouse(*table(rows))
        opts = f", options: {{{options}}}" if options else ""
        return write_sync("fb", SYNC % (opts, delivery), SQL)

    return make


def emulator(sandbox: Sandbox) -> StreamBackEmulator:
    found = sandbox.emulator("streamback")
    assert isinstance(found, StreamBackEmulator)
    return found


def requests(sandbox: Sandbox, endpoint: str) -> int:
    return int(sandbox.stats()["streamback"].get(endpoint, {}).get("requests", 0))


def write_file(home: Path, relative: str, data: bytes) -> bytes:
    path = home / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def test_valid_feedback_is_delivered_once_with_the_vendor_id_in_the_ledger(sandbox, feedback_sync):
    spec = feedback_sync({
        "a": {},
        "b": {"message": None, "emotion": 4},  # emotion alone is enough
        "c": {"message": None, "survey": 5, "kind": "praise"},  # a survey answer alone is enough
        "d": {"message": "   ", "emotion": 2.0, "email": None},  # a blank message is sent as written
        "e": {"message": " spaced  out ", "emotion": 4.5, "screenshot": ""},  # untrimmed; "" = no screenshot
    })

    run = run_sync(spec)

    assert (run.delivered, run.rejected, run.status) == (5, 0, "success")
    stored = emulator(sandbox).feedback
    ledger_ids = {i["source_key"]: i["vendor_id"] for i in open_ledger().items("fb", state="delivered")}
    assert set(ledger_ids) == {"a", "b", "c", "d", "e"}
    assert set(ledger_ids.values()) == set(stored) and all(v.startswith("fb_") for v in ledger_ids.values())
    bodies = {key: stored[fid]["body"] for key, fid in ledger_ids.items()}
    assert bodies["a"] == {
        "message": "Checkout is broken", "type": "bug", "triggerSource": "manual",
        "snapshot": {"url": "https://app.example.com/checkout", "route": "/checkout"},
        "user": {"id": "u1", "email": "u1@example.com"},
    }
    assert "message" not in bodies["b"] and bodies["b"]["emotion"] == 4
    assert bodies["c"]["surveyResponse"] == {"surveyId": "checkout-ease", "answer": 5}
    assert bodies["d"]["message"] == "   " and bodies["d"]["emotion"] == 2 and bodies["d"]["user"] == {"id": "u1"}
    assert bodies["e"]["message"] == " spaced  out " and bodies["e"]["emotion"] == 4.5  # "number", 1-5
    assert requests(sandbox, "upload_url") == requests(sandbox, "finalize") == 0  # nothing to upload
    assert not emulator(sandbox).unknown_fields  # the pseudo-fields never reach the body

    again = run_sync(spec)

    assert (again.delivered, again.skipped) == (0, 5)
    assert requests(sandbox, "feedback") == 5 and len(stored) == 5


def test_validation_rules_reject_the_right_rows_with_clear_reasons(sandbox, feedback_sync, syncline_home):
    spec = feedback_sync({
        "ok": {},
        "bad_type": {"kind": "complaint"},
        "emotion_9": {"emotion": 9},
        "emotion_0": {"emotion": 0},
        "nothing": {"message": None},
        "no_file": {"screenshot": "shots/missing.png"},
        "outside": {"screenshot": "/etc/hostname"},
        "escape": {"screenshot": "../../etc/hostname"},
        "attachment_missing": {"files": ["logs/nope.txt"]},
    })

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (1, 8)
    reasons = {i["source_key"]: i["reason"] for i in open_ledger().items("fb", state="rejected")}
    required = "message is required when neither emotion nor surveyResponse is given"
    outside = f"is outside the files root {syncline_home.resolve()} (set destination.options.files_root to allow it)"
    assert reasons == {
        "bad_type": "type must be one of bug, suggestion, praise, question, other; got complaint",
        "emotion_9": "emotion must be at most 5, got 9.0",
        "emotion_0": "emotion must be at least 1, got 0.0",
        "nothing": required,
        "no_file": "screenshot_path file not found: shots/missing.png",
        "outside": f"screenshot_path /etc/hostname {outside}",
        "escape": f"screenshot_path ../../etc/hostname {outside}",
        "attachment_missing": "attachments file not found: logs/nope.txt",
    }
    assert len(emulator(sandbox).feedback) == 1  # no feedback was created for any rejected row
    assert requests(sandbox, "feedback") == 1 and requests(sandbox, "upload_url") == 0


def test_choice_strict_rules_and_empty_files_reject_are_opt_in(sandbox, feedback_sync, syncline_home, write_sync):
    """Choice: a blank message, a fractional emotion, a missing triggerSource and a 0-byte file are sent by
    default (the document does not forbid them); `strict: true` and `empty_files: reject` refuse them."""
    write_file(syncline_home, "shots/empty.png", b"")
    rows = {
        "ok": {},
        "emotion_half": {"emotion": 4.5},
        "blank": {"message": "  "},
        "empty_file": {"screenshot": "shots/empty.png"},
    }
    default = feedback_sync(rows)
    run = run_sync(default)
    assert (run.delivered, run.rejected) == (4, 0)
    ids = {i["source_key"]: i["vendor_id"] for i in open_ledger().items("fb", state="delivered")}
    emu = emulator(sandbox)
    assert emu.objects[emu.feedback[ids["empty_file"]]["objectKey"]] == b""  # uploaded as it is, finalized

    sandbox.reset()
    strict = write_sync("fb_strict", SYNC % (", options: {empty_files: reject}", FAST) + "    strict: true\n",
                        SQL.replace("'manual' AS triggerSource", "CASE WHEN _key <> 'ok' THEN 'manual' END AS triggerSource"))
    run = run_sync(strict)
    assert (run.delivered, run.rejected) == (0, 4)
    assert {i["source_key"]: i["reason"] for i in open_ledger().items("fb_strict", state="rejected")} == {
        "ok": "triggerSource is missing (rule trigger_source_required)",
        "emotion_half": "emotion must be a whole number, got 4.5 (rule emotion_whole_number)",
        "blank": "message is blank (rule message_not_blank)",
        "empty_file": "screenshot_path file is empty: shots/empty.png (destination.options.empty_files: reject)",
    }
    assert requests(sandbox, "feedback") == 0


def test_a_server_side_validation_error_rejects_the_item_with_streambacks_message(sandbox, feedback_sync):
    spec = feedback_sync({"a": {}, "b": {"message": "contains forbidden-word"}, "c": {}})
    sandbox.set_fault("streamback", "feedback", Fault("reject_matching", count=100, match="forbidden-word"))

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (2, 1)
    (bad,) = open_ledger().items("fb", state="rejected")
    assert bad["source_key"] == "b"
    assert bad["reason"] == (
        "StreamBack refused the feedback (VALIDATION_ERROR: item refused by server-side rule ('forbidden-word'))"
    )
    assert requests(sandbox, "feedback") == 3  # a 400 is never retried


def test_screenshot_is_uploaded_once_without_the_api_key_then_finalized(sandbox, feedback_sync, syncline_home):
    """The three documented steps; choices: the upload-url body, the object key read from fileUrl, a PUT without the API key."""
    relative = write_file(syncline_home, "shots/a.png", sample.png(16, 8, 1))
    absolute = write_file(syncline_home, "shots/b.png", sample.png(16, 8, 2))
    spec = feedback_sync({
        "a": {"screenshot": "shots/a.png"},
        "b": {"screenshot": str(syncline_home / "shots" / "b.png")},  # absolute, inside SYNCLINE_HOME
    })

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (2, 0)
    emu = emulator(sandbox)
    items = {i["source_key"]: i for i in open_ledger().items("fb", state="delivered")}
    for key, data in (("a", relative), ("b", absolute)):
        stored = emu.feedback[items[key]["vendor_id"]]
        assert stored["finalized"] is True and stored["screenshotUploaded"] is True
        assert emu.objects[stored["objectKey"]] == data
        assert emu.upload_counts[stored["objectKey"]] == 1
        assert f'"screenshot_key": "{stored["objectKey"]}"' in items[key]["progress"]
    uploads = sandbox.records("streamback", "uploads")
    assert len(uploads) == 2
    assert all(u["content_type"] == "image/png" and u["api_key_sent"] is False for u in uploads)
    assert len(sandbox.records("streamback", "finalize")) == 2
    assert requests(sandbox, "status") == 2  # finalize is read back (verify: true by default)

    sender = make_sender(spec, resolve_credentials(spec.vendor), resolve_base_url(spec.vendor), "t")
    status = get_feedback_status(sender, items["a"]["vendor_id"])
    assert status is not None and status["finalized"] is True

    run_sync(spec)
    assert requests(sandbox, "storage") == 2 and requests(sandbox, "feedback") == 2  # rerun sends nothing


def test_attachments_are_presigned_and_uploaded_before_finalize(sandbox, feedback_sync, syncline_home):
    """Choice: attachments go before finalize, MIME types are guessed from the name, `finalize: always` is an option."""
    shot = write_file(syncline_home, "shots/x.png", sample.png(8, 8, 3))
    video = write_file(syncline_home, "files/recording.webm", b"\x1aE\xdf\xa3" + bytes(range(200)))
    har = write_file(syncline_home, "files/network.json", b'{"log": {"entries": []}}')
    spec = feedback_sync(
        {
            "both": {"screenshot": "shots/x.png", "files": ["files/recording.webm", "files/network.json"]},
            "files_only": {"files": ["files/network.json"]},
            "plain": {},
        },
        options="finalize: always",
    )

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (3, 0)
    emu = emulator(sandbox)
    ids = {i["source_key"]: i["vendor_id"] for i in open_ledger().items("fb", state="delivered")}
    both = emu.feedback[ids["both"]]
    assert both["finalized"] is True and emu.objects[both["objectKey"]] == shot
    assert sorted(emu.objects[k] for k in both["attachments"]) == sorted([video, har])
    presigned = {(p["id"], p["filename"]): p for p in sandbox.records("streamback", "attachments_presign")}
    assert presigned[(ids["both"], "recording.webm")]["mimeType"] == "video/webm"
    assert presigned[(ids["both"], "recording.webm")]["sizeBytes"] == len(video)
    assert presigned[(ids["both"], "network.json")]["mimeType"] == "application/json"
    assert emu.objects[emu.feedback[ids["files_only"]]["attachments"][0]] == har
    # finalize: always also finalizes feedback without a screenshot, saying so.
    finals = {f["id"]: f for f in sandbox.records("streamback", "finalize")}
    assert finals[ids["files_only"]] == {"id": ids["files_only"], "screenshotUploaded": False, "objectKey": None}
    assert finals[ids["plain"]]["screenshotUploaded"] is False
    assert all(count == 1 for count in emu.upload_counts.values()) and len(emu.upload_counts) == 4


def test_auth_failure_stops_the_sync_with_nothing_delivered(sandbox, feedback_sync, monkeypatch):
    """Choice: a 401 (documented UNAUTHORIZED) stops the sync rather than failing each item."""
    spec = feedback_sync({"a": {}, "b": {}, "c": {}}, delivery=f"concurrency: 1, {FAST}")
    monkeypatch.setenv("STREAMBACK_API_KEY", "env_wrong_key_123")

    run = run_sync(spec)

    assert run.status == "stopped" and "HTTP 401" in (run.error or "")
    assert "env_wrong_key_123" not in (run.error or "")
    assert run.delivered == 0 and not emulator(sandbox).feedback
    assert requests(sandbox, "feedback") == 1  # a 401 is never retried, and stops the sync
    counts = open_ledger().counts("fb")
    assert counts["delivered"] == 0 and counts["failed"] == 3


CRASH_RUN = (
    "import sys; from pathlib import Path; from connectors.spec import load_sync_file; "
    "from connectors.runner import run_sync; run_sync(load_sync_file(Path(sys.argv[1])))"
)


@pytest.mark.parametrize(
    ("step", "upload_urls", "presigns", "finalizes"),
    [
        ("upload_url", 1, 1, 1),  # feedback created, nothing else: the rerun does the rest
        ("upload", 2, 1, 1),  # a presigned URL is never reused from the ledger: a fresh one is asked
        ("attachment_upload", 1, 2, 1),  # the screenshot landed: not uploaded again
        ("finalize", 1, 1, 1),  # every file landed: only finalize is left
        ("status", 1, 1, 2),  # finalize went out, the crash hid it: repeating it is harmless
    ],
)
def test_a_crash_between_steps_then_a_rerun_leaves_one_finalized_feedback_with_files_uploaded_once(
    sandbox, feedback_sync, syncline_home, step, upload_urls, presigns, finalizes
):
    """Choice: per-step progress in the ledger (the document has no idempotency key), so a rerun resumes."""
    shot = write_file(syncline_home, "shots/crash.png", sample.png(12, 12, 7))
    write_file(syncline_home, "files/trace.txt", b"trace\n" * 10)
    spec = feedback_sync({"a": {"screenshot": "shots/crash.png", "files": ["files/trace.txt"]}})

    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_RUN, str(spec.file)],
        env={**os.environ, "SYNCLINE_CRASH_BEFORE_STEP": step}, cwd=REPO, capture_output=True, timeout=120,
    )

    assert crashed.returncode == 70, crashed.stderr.decode()[-2000:]
    emu = emulator(sandbox)
    (feedback_id,) = emu.feedback
    assert emu.feedback[feedback_id]["finalized"] is (step == "status")
    (item,) = open_ledger().items("fb")
    assert item["state"] == "in_doubt" and item["vendor_id"] == feedback_id  # saved right after the 201

    rerun = run_sync(spec)

    assert (rerun.delivered, rerun.in_doubt, rerun.failed) == (1, 0, 0)
    assert list(emu.feedback) == [feedback_id] and requests(sandbox, "feedback") == 1
    stored = emu.feedback[feedback_id]
    assert stored["finalized"] is True and emu.objects[stored["objectKey"]] == shot
    assert len(stored["attachments"]) == 1
    assert sorted(emu.upload_counts.values()) == [1, 1]  # screenshot and attachment, each uploaded once
    assert len(sandbox.records("streamback", "finalize")) == 1
    assert (requests(sandbox, "upload_url"), requests(sandbox, "attachments_presign"),
            requests(sandbox, "finalize")) == (upload_urls, presigns, finalizes)
    (item,) = open_ledger().items("fb")
    assert item["state"] == "delivered" and item["vendor_id"] == feedback_id


def test_5xx_and_429_on_every_step_are_retried(sandbox, feedback_sync, syncline_home):
    """Choice: retry policy on every step (the document lists RATE_LIMITED 429 but no retry rules)."""
    write_file(syncline_home, "shots/r.png", sample.png(8, 8, 9))
    write_file(syncline_home, "files/r.txt", b"retry me\n")
    spec = feedback_sync({"a": {"screenshot": "shots/r.png", "files": ["files/r.txt"]}})
    sandbox.set_fault("streamback", "feedback", Fault("429_bare"))  # a 429 was surely not stored: retried
    sandbox.set_fault("streamback", "upload_url", Fault("429", count=2, retry_after=0))
    sandbox.set_fault("streamback", "storage", Fault("500"))
    sandbox.set_fault("streamback", "attachments_presign", Fault("429_bare"))
    sandbox.set_fault("streamback", "finalize", Fault("503", count=2))
    sandbox.set_fault("streamback", "status", Fault("500"))

    run = run_sync(spec)

    assert (run.delivered, run.in_doubt, run.failed) == (1, 0, 0)
    assert run.retries == 8 and run.http_429 == 4
    emu = emulator(sandbox)
    (stored,) = emu.feedback.values()
    assert stored["finalized"] is True
    assert sorted(emu.upload_counts.values()) == [1, 1]
    by_status = {ep: s["by_status"] for ep, s in sandbox.stats()["streamback"].items()}
    assert by_status["finalize"] == {503: 2, 200: 1} and by_status["storage"] == {500: 1, 200: 2}


@pytest.mark.parametrize("fault", ["503", "drop_after"])
def test_a_feedback_post_with_unknown_outcome_is_looked_up_in_the_users_history_before_a_resend(
    sandbox, feedback_sync, fault
):
    """Choice: the document has no idempotency key; a lost POST is looked up in the user's history before a resend."""
    spec = feedback_sync({"a": {}})
    sandbox.set_fault("streamback", "feedback", Fault(fault))

    run = run_sync(spec)

    # 503: not stored, the history shows nothing, so it is sent again. drop_after: stored, the history
    # shows it, so its id is taken and no second POST goes out. Either way StreamBack holds exactly one.
    assert (run.delivered, run.in_doubt, run.resent_unknown) == (1, 0, 0)
    assert requests(sandbox, "user_history") == 1
    assert requests(sandbox, "feedback") == (2 if fault == "503" else 1)
    assert len(emulator(sandbox).feedback) == 1
    (item,) = open_ledger().items("fb")
    assert item["state"] == "delivered" and item["vendor_id"] == next(iter(emulator(sandbox).feedback))


@pytest.mark.parametrize("policy", ["resend", "hold"])
def test_feedback_without_a_user_cannot_be_looked_up_so_the_in_doubt_policy_decides(sandbox, feedback_sync, policy):
    """Choice: without a user to look up, the sync's `delivery.in_doubt` policy decides."""
    spec = feedback_sync({"a": {"user_id": None, "email": None}}, delivery=f"{FAST}, in_doubt: {policy}")
    sandbox.set_fault("streamback", "feedback", Fault("drop_after"))

    first = run_sync(spec)

    assert (first.delivered, first.in_doubt) == (0, 1)  # never resent within the run
    assert requests(sandbox, "feedback") == 1 and len(emulator(sandbox).feedback) == 1
    (item,) = open_ledger().items("fb")
    assert item["state"] == "in_doubt" and "not resent" in item["reason"]

    second = run_sync(spec)
    copies = len(emulator(sandbox).feedback)
    if policy == "hold":
        assert (second.delivered, second.in_doubt, copies) == (0, 1, 1)
    else:  # at-least-once: sent again, and the possible duplicate is counted
        assert (second.delivered, second.resent_unknown, copies) == (1, 1, 2)
        assert copies - 1 == second.resent_unknown


def test_a_step_that_keeps_failing_leaves_the_item_in_doubt_and_the_next_run_resumes_it(
    sandbox, feedback_sync, syncline_home
):
    write_file(syncline_home, "shots/s.png", sample.png(8, 8, 4))
    spec = feedback_sync({"a": {"screenshot": "shots/s.png"}, "b": {"screenshot": "shots/s.png"}})
    sandbox.set_fault("streamback", "finalize", Fault("503", count=1000))

    first = run_sync(spec)

    assert (first.delivered, first.in_doubt) == (0, 2)
    items = open_ledger().items("fb", state="in_doubt")
    assert all("(at step finalize)" in i["reason"] and i["vendor_id"] for i in items)

    sandbox.clear_faults()
    gone = items[0]["vendor_id"]
    emulator(sandbox).control("delete_feedback", {"id": gone})  # the vendor lost one meanwhile
    second = run_sync(spec)

    assert (second.delivered, second.rejected) == (1, 1)
    (rejected,) = open_ledger().items("fb", state="rejected")
    assert rejected["vendor_id"] == gone
    assert rejected["reason"] == (
        f"StreamBack refused step finalize (HTTP 404 NOT_FOUND: feedback {gone} not found); "
        f"StreamBack no longer knows feedback {gone}"
    )
    assert requests(sandbox, "feedback") == 2 and sorted(emulator(sandbox).upload_counts.values()) == [1, 1]


def test_read_api_wrappers_and_reconcile_by_feedback_status(sandbox, feedback_sync):
    spec = feedback_sync({"a": {}, "b": {"kind": "praise"}, "c": {"user_id": "u2", "email": "u2@example.com"}})
    run_sync(spec)
    ledger = open_ledger()
    sender = make_sender(spec, resolve_credentials(spec.vendor), resolve_base_url(spec.vendor), "t", ledger)
    ids = {i["source_key"]: i["vendor_id"] for i in ledger.items("fb", state="delivered")}

    assert get_config(sender)["display"] == {"trigger": "dot", "position": "right-center"}
    history = get_user_history(sender, end_user_id="u1")
    assert history is not None and history["totalSubmissions"] == 2
    assert {f["id"] for f in history["recentFeedback"]} == {ids["a"], ids["b"]}
    by_email = get_user_history(sender, end_user_email="u2@example.com")
    assert by_email is not None and [f["id"] for f in by_email["recentFeedback"]] == [ids["c"]]
    status = get_feedback_status(sender, ids["a"])
    assert status is not None and status["feedbackId"] == ids["a"] and status["status"] == "new"
    assert get_feedback_status(sender, "fb_unknown") is None
    assert verify_feedback(sender, [ids["b"], "fb_unknown"])["fb_unknown"] is None

    def reconcile(start: dt.datetime | None = None, end: dt.datetime | None = None) -> dict[str, Any]:
        return spec.endpoint.reconcile(
            sender, sync="fb", window_start=start.isoformat() if start else None,
            window_end=end.isoformat() if end else None, delivered=ledger.delivered_in_window("fb", start, end),
        )

    report = reconcile()
    assert report["matches"] is True and (report["vendor_count"], report["ledger_count"]) == (3, 3)

    emulator(sandbox).control("delete_feedback", {"id": ids["c"]})
    report = reconcile()
    assert report["matches"] is False and report["difference"] == 1 and report["missing_ids"] == [ids["c"]]
    # Rows a and b fall in the first three hours (90 minutes apart): the loss of c is outside that window.
    start = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    window = reconcile(start, start + dt.timedelta(hours=2))
    assert window["matches"] is True and window["checked_ids"] == 2


def test_options_are_checked_when_the_sync_loads(sandbox, feedback_sync):
    """Choice: syncline's own destination.options for StreamBack."""
    with pytest.raises(ConfigError) as error:
        feedback_sync({"a": {}}, options="finalize: sometimes")
    assert "destination.options.finalize" in str(error.value)
    with pytest.raises(ConfigError) as error:
        feedback_sync({"a": {}}, options="retries: 3")
    assert "destination.options.retries" in str(error.value)


def test_files_root_option_allows_files_outside_syncline_home(sandbox, feedback_sync, tmp_path):
    """Choice: files must live under a files root (a safety boundary, not a vendor rule)."""
    shared = tmp_path / "shared-screens"
    data = write_file(shared, "z.png", sample.png(4, 4, 5))
    spec = feedback_sync({"a": {"screenshot": str(shared / "z.png")}, "b": {"screenshot": "z.png"}},
                         options=f"files_root: '{shared}'")

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (2, 0)  # absolute inside the root, and relative to it
    assert sorted(emulator(sandbox).objects.values()) == [data, data]


def test_the_packaged_sample_sync_delivers_and_rejects_the_bad_rows(sandbox, sample_warehouse):
    sample_warehouse(sample)
    spec = load_sync_file(REPO / "pipelines" / "syncs" / "feedback_to_streamback.yaml")

    run = run_sync(spec)

    assert (run.source_rows, run.delivered, run.rejected, run.status) == (sample.ROWS, sample.ROWS - 5, 5, "success")
    reasons = " | ".join(r for r, _ in open_ledger().rejection_reasons(spec.name))
    for expected in ("type must be one of", "emotion must be at most 5", "message is required",
                     "file not found: screenshots/fb_0045.png", "/etc/hostname is outside the files root"):
        assert expected in reasons
    emu = emulator(sandbox)
    shots = [f for f in emu.feedback.values() if f["objectKey"]]
    assert len(shots) == len(range(0, sample.ROWS, sample.SCREENSHOT_EVERY)) - 2  # missing file, outside root
    assert all(f["finalized"] for f in shots) and set(emu.upload_counts.values()) == {1}
    assert run_sync(spec).delivered == 0

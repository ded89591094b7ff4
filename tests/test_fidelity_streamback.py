"""Hostile rows for StreamBack, built from the vendor document (docs/vendor-api/streamback.md), not from the
connector's code. Over real HTTP to the sandbox, screenshot/attachment steps included.

For each documented rule of ``feedback``: (a) a row that breaks it is rejected locally, with the field (and
rule) in the reason, and never reaches the emulator; (b) a row at the edge of what the document allows is
delivered unchanged: each value of the model is found byte for byte in the raw feedback body the sandbox
received (``sandbox.bodies``), the stored feedback equals it value for value, and files are stored byte for
byte. No request carries NaN or Infinity: the emulator's strict parser counts ``invalid_json`` (every JSON
body, whatever answered it).

The document's rules used here (the Submit Feedback table and example):

- ``message | string | Feedback text (optional if emotion/survey provided)``;
- ``type | string | bug, suggestion, praise, question, other`` (not marked Optional);
- ``emotion | number | 1-5 emotion rating (1=Awful, 5=Great). Optional``;
- ``triggerSource | string | ... and related types`` (an open list);
- ``surveyResponse | object``; ``snapshot`` and ``user`` objects in the example;
- a screenshot is uploaded through Get Upload URL and Finalize Feedback; "Mark feedback as complete after
  screenshot upload" (a feedback without a screenshot has nothing to finalize).

A choice, in a test that says so: ``screenshot_path`` is syncline's pseudo-field (the document has none),
and NULL, an empty text or a whitespace-only text there all mean "no screenshot" (documented per field in
``connectors/vendors/streamback.py``); any other path is used as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connectors.runner import run_sync
from connectors.sandbox.emulators.streamback import StreamBackEmulator
from pipelines.sample_data import streamback as sample
from tests.conftest import ledger_items, rejection_reasons

SYNC = """
    source: {table: analytics.fb, key: id}
    destination: {vendor: streamback, endpoint: feedback}
"""
COLUMNS = "id, message, type, emotion, trigger, survey, snapshot, usr, screenshot"
SQL = """
    SELECT _key, message, type, TRY_CAST(emotion AS DOUBLE) AS emotion, trigger AS triggerSource,
           survey AS surveyResponse, snapshot, usr AS "user", screenshot AS screenshot_path
    FROM source
"""


def _row(key: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"message": f"feedback {key}", "type": "bug", "emotion": None, "trigger": "manual",
                           "survey": None, "snapshot": '{"url": "https://app.example.com/x", "route": "/x"}',
                           "usr": f'{{"id": "u_{key}"}}', "screenshot": None}
    row.update(over)
    return {"id": key, **row}


def _table(rows: list[dict[str, Any]]) -> str:
    def lit(v: Any) -> str:
        return "NULL" if v is None else "'" + str(v).replace("'", "''") + "'"

    body = ",\n".join("(" + ", ".join(lit(r[c.strip()]) for c in COLUMNS.split(",")) + ")" for r in rows)
    typed = ", ".join(f"CAST({c.strip()} AS VARCHAR) AS {c.strip()}" for c in COLUMNS.split(","))
    return f"CREATE TABLE analytics.fb AS SELECT {typed} FROM (VALUES {body}) t({COLUMNS})"





def _sent_bodies(sandbox: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """The raw feedback bodies the sandbox received (text, value), by the user id each carries."""
    sent = {}
    for body in sandbox.bodies("streamback", "feedback"):
        text = body.decode("utf-8")
        value = json.loads(text)
        sent[value["user"]["id"]] = (text, value)
    return sent


def _emulator(sandbox: Any) -> StreamBackEmulator:
    found = sandbox.emulator("streamback")
    assert isinstance(found, StreamBackEmulator)
    return found


def _requests(sandbox: Any, endpoint: str) -> int:
    return int(sandbox.stats().get("streamback", {}).get(endpoint, {}).get("requests", 0))


def _no_invalid_json(sandbox: Any) -> None:
    stats = sandbox.stats().get("streamback", {})
    assert all(s.get("invalid_json", 0) == 0 for s in stats.values()), stats
    assert _emulator(sandbox).invalid_bodies == []


def test_feedback_rows_that_break_a_documented_rule_are_rejected_locally_and_never_sent(
    sandbox, warehouse, write_sync
):
    rows = [
        _row("ok"),
        _row("no_type", type=None),
        _row("type_outside_list", type="complaint"),
        _row("type_case", type="Bug"),
        _row("emotion_0", emotion="0"),
        _row("emotion_6", emotion="6"),
        _row("emotion_nan", emotion="nan"),
        _row("emotion_inf", emotion="inf"),
        _row("nothing_to_say", message=None),  # no message, no emotion, no survey
        _row("survey_array", message=None, survey="[4]"),
        _row("snapshot_text", snapshot='"https://app.example.com/x"'),
        _row("snapshot_nan", snapshot='{"viewportWidth": NaN}'),
        _row("user_string", usr='"user_123"'),
    ]
    warehouse(_table(rows))

    run = run_sync(write_sync("fb", SYNC, SQL))

    reasons = rejection_reasons("fb")
    assert set(reasons) == {r["id"] for r in rows} - {"ok"}
    assert reasons["no_type"] == "type is required"
    assert reasons["type_outside_list"] == "type must be one of bug, suggestion, praise, question, other; got complaint"
    assert reasons["type_case"] == "type must be one of bug, suggestion, praise, question, other; got Bug"
    assert reasons["emotion_0"] == "emotion must be at least 1, got 0.0"
    assert reasons["emotion_6"] == "emotion must be at most 5, got 6.0"
    assert reasons["emotion_nan"].startswith("emotion must be a number")
    assert reasons["emotion_inf"].startswith("emotion must be a number")
    assert reasons["nothing_to_say"] == "message is required when neither emotion nor surveyResponse is given"
    assert reasons["survey_array"].startswith("surveyResponse must be a JSON object, got [4]")
    assert reasons["snapshot_text"].startswith("snapshot must be a JSON object")
    assert reasons["snapshot_nan"].startswith("snapshot ")
    assert reasons["user_string"].startswith("user must be a JSON object")
    assert (run.delivered, run.rejected) == (1, len(rows) - 1)
    assert [f["body"]["message"] for f in _emulator(sandbox).feedback.values()] == ["feedback ok"]
    assert _requests(sandbox, "feedback") == 1
    _no_invalid_json(sandbox)


def test_feedback_rows_at_the_edge_of_the_document_are_delivered_unchanged(
    sandbox, warehouse, write_sync, syncline_home: Path
):
    shot = sample.png(10, 6, 42)
    (syncline_home / "shots").mkdir()
    (syncline_home / "shots" / "a.png").write_bytes(shot)
    rows = [
        _row("padded", message="  The button  does nothing \n"),  # sent as written, never trimmed
        _row("blank_message", message="   "),  # a blank text is a message
        _row("empty_message_emotion", message="", emotion="3"),
        _row("emotion_only", message=None, emotion="1"),
        _row("emotion_top", message=None, emotion="5"),
        _row("emotion_fraction", emotion="2.5"),  # `number`, 1-5
        _row("survey_only", message=None, type="praise", survey='{"surveyId": "s", "questionId": "q1", '
             '"questionType": "stars", "answer": 4, "followUpText": "ünïcødé 😀"}'),
        _row("related_trigger", type="question", trigger="rageClick"),  # "and related types"
        _row("no_trigger", type="suggestion", trigger=None),
        _row("other_type", type="other", snapshot='{"viewportWidth": 375, "viewportHeight": 812.5, "extra": [1, null]}'),
        _row("with_screenshot", screenshot="shots/a.png"),
        _row("user_email", usr='{"id": "u9", "email": "u9@example.com"}'),
    ]
    warehouse(_table(rows))

    run = run_sync(write_sync("fb", SYNC, SQL))

    assert rejection_reasons("fb") == {}
    assert run.delivered == len(rows)
    emu = _emulator(sandbox)
    ids = {i["source_key"]: i["vendor_id"] for i in ledger_items("fb", "delivered")}
    sent = _sent_bodies(sandbox)
    assert len(sent) == len(rows) == _requests(sandbox, "feedback")
    for row in rows:
        # What the model wrote, as JSON text: strings as JSON strings in UTF-8, JSON columns as written.
        written: dict[str, str] = {"type": json.dumps(row["type"])}
        if row["message"] is not None:
            written["message"] = json.dumps(row["message"], ensure_ascii=False)
        if row["emotion"] is not None:
            written["emotion"] = repr(float(row["emotion"]))  # the model casts it to DOUBLE
        if row["trigger"] is not None:
            written["triggerSource"] = json.dumps(row["trigger"])
        for column, name in (("survey", "surveyResponse"), ("snapshot", "snapshot"), ("usr", "user")):
            if row[column] is not None:
                written[name] = row[column]
        raw, value = sent[json.loads(row["usr"])["id"]]
        assert set(value) == set(written), row["id"]  # screenshot_path never went into a body
        for name, text in written.items():
            assert f'"{name}":{text}' in raw, (row["id"], name, raw)
        assert emu.feedback[ids[row["id"]]]["body"] == {n: json.loads(t) for n, t in written.items()}, row["id"]
    # The row with a screenshot: uploaded byte for byte, then finalized; the others have nothing to finalize.
    with_shot = emu.feedback[ids["with_screenshot"]]
    assert with_shot["finalized"] is True and emu.objects[with_shot["objectKey"]] == shot
    assert _requests(sandbox, "upload_url") == 1 and _requests(sandbox, "finalize") == 1
    assert not emu.unknown_fields
    _no_invalid_json(sandbox)


def test_choice_an_empty_or_blank_screenshot_path_means_no_screenshot(sandbox, warehouse, write_sync):
    """Choice (documented per field in connectors/vendors/streamback.py): ``screenshot_path`` is syncline's
    pseudo-field, not the document's; NULL, an empty text and a whitespace-only text all mean "no
    screenshot". The feedback is delivered without one, and with nothing uploaded there is nothing to
    finalize ("Mark feedback as complete after screenshot upload")."""
    rows = [_row("no_screenshot"), _row("empty_screenshot", screenshot=""), _row("blank_screenshot", screenshot="   ")]
    warehouse(_table(rows))

    run = run_sync(write_sync("fb", SYNC, SQL))

    assert (run.delivered, rejection_reasons("fb")) == (3, {})
    emu = _emulator(sandbox)
    ids = {i["source_key"]: i["vendor_id"] for i in ledger_items("fb", "delivered")}
    for row in rows:
        stored = emu.feedback[ids[row["id"]]]
        assert (stored["objectKey"], stored["finalized"]) == (None, False), row["id"]
        assert stored["body"]["message"] == row["message"]
    assert _requests(sandbox, "upload_url") == 0 and _requests(sandbox, "finalize") == 0
    assert not emu.unknown_fields  # screenshot_path never went into a body
    _no_invalid_json(sandbox)


def test_nan_and_infinity_inside_feedback_objects_are_rejected_locally(sandbox, warehouse, write_sync):
    warehouse(
        """CREATE TABLE analytics.fb AS SELECT * FROM (VALUES
             ('ok', 375.0), ('nan', 'nan'::DOUBLE), ('inf', 'inf'::DOUBLE), ('minus_inf', '-inf'::DOUBLE)
           ) t(id, width)"""
    )
    sql = """SELECT _key, 'bug' AS type, 'broken' AS message,
                    {'url': 'https://app.example.com/', 'viewportWidth': width} AS snapshot,
                    {'surveyId': 's', 'answer': width, 'more': [width]} AS surveyResponse FROM source"""

    run = run_sync(write_sync("fb", SYNC, sql))

    reasons = rejection_reasons("fb")
    assert sorted(reasons) == ["inf", "minus_inf", "nan"]
    assert all("NaN" in r and ("snapshot" in r or "surveyResponse" in r) for r in reasons.values())
    assert run.delivered == 1 and _requests(sandbox, "feedback") == 1
    (stored,) = _emulator(sandbox).feedback.values()
    assert stored["body"]["snapshot"] == {"url": "https://app.example.com/", "viewportWidth": 375.0}
    _no_invalid_json(sandbox)


def test_the_emulator_accepts_every_plausible_finalize_object_key(sandbox):
    """Where the document is silent (the upload-url answer has a fileUrl, no objectKey), the emulator takes
    the issued key, the fileUrl or its path: a test of the connector's choice cannot agree by construction."""
    import urllib.request

    base = sandbox.base_url("streamback")
    key = {"X-API-Key": StreamBackEmulator.keys["api_key"], "Content-Type": "application/json"}

    def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(url, data=data, method=method, headers=headers or key)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    for variant in ("key", "fileUrl", "path"):
        fid = call("POST", f"{base}/v1/sdk/feedback", {"type": "bug", "message": variant})["id"]
        answer = call("POST", f"{base}/v1/sdk/upload-url", {"feedbackId": fid})
        call("PUT", answer["uploadUrl"], b"png-bytes", {"Content-Type": "image/png"})
        file_url = answer["fileUrl"]
        given = {"fileUrl": file_url, "path": file_url.split("://", 1)[1].split("/", 1)[1],
                 "key": file_url.split("/_storage/", 1)[1]}[variant]
        assert call("POST", f"{base}/v1/sdk/feedback/{fid}/finalize",
                    {"screenshotUploaded": True, "objectKey": given})["finalized"] is True
        assert _emulator(sandbox).feedback[fid]["objectKey"] == file_url.split("/_storage/", 1)[1]

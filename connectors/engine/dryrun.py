"""An exact dry run: the requests a real run would send, written to a folder instead of the network.

``syncline run SYNC --dry-run --out DIR`` plans with the same code as a real run (the ledger snapshot,
the anti-join, the claim groups in key order, the request boundaries by items and bytes) and writes:

- ``requests.jsonl``: one line per request: method, URL, headers (credentials redacted), the body exactly
  as it would leave, the idempotency keys it carries and its size;
- ``rejected.jsonl``: every row that would be rejected, with its key and reason;
- ``plan.json``: the counts, the number of requests and bytes, the time the run would take under the
  vendor's documented rate limit, and the checks a dry run cannot make without the vendor.

What a dry run cannot reproduce is named in ``plan.json``: per-run markers some vendors' bodies carry
(Flux's ``syncline_batch``/``syncline_claim`` tags depend on the run and claim ids), checks that read from
the vendor (GradeMyPage's active experiments), and answers (refusals found only by the vendor).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from connectors.engine.endpoint import Endpoint

REDACTED = "[redacted]"


class DryRunOutput:
    """Writes one sync's planned requests, rejects and plan under ``out_dir/<sync>/``."""

    def __init__(self, out_dir: Path, sync: str, endpoint: Endpoint, base_url: str,
                 credentials: Mapping[str, str], secret_names: Sequence[str],
                 placeholders: Mapping[str, str] | None = None) -> None:
        self.folder = out_dir / sync
        self.folder.mkdir(parents=True, exist_ok=True)
        self.endpoint = endpoint
        self.url = base_url.rstrip("/") + endpoint.path
        # Credentials as the request would carry them, secrets replaced: public keys (GradeMyPage's
        # projectId) stay, since the body would be wrong without them.
        self.shown = {name: (REDACTED if name in secret_names else value) for name, value in credentials.items()}
        for name in secret_names:
            self.shown.setdefault(name, REDACTED)
        for name, env in (placeholders or {}).items():  # a public key not set: its variable's name
            self.shown.setdefault(name, f"${env}")
        self.secrets = [v for n, v in credentials.items() if n in secret_names and v]
        self.headers = dict(endpoint.headers(self.shown))
        self.requests = 0
        self.bytes = 0
        self._out: IO[str] = (self.folder / "requests.jsonl").open("w", encoding="utf-8")

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= 4:
                text = text.replace(secret, REDACTED)
        return text

    def request(self, keys_json: str, joined: bytes, items: Sequence[bytes], count: int) -> None:
        body = self.endpoint.encode_joined(joined, count, self.shown)
        if body is None:
            body = self.endpoint.encode(list(items), self.shown)
        self.requests += 1
        self.bytes += len(body)
        self._out.write(json.dumps({
            "request": self.requests, "method": self.endpoint.method, "url": self.url, "headers": self.headers,
            "items": count, "bytes": len(body), "keys": json.loads(keys_json),
            "body": self._redact(body.decode("utf-8")),
        }, ensure_ascii=False) + "\n")

    def rejects(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with (self.folder / "rejected.jsonl").open("w", encoding="utf-8") as out:
            for key, source, _hash, reason, excerpt, cursor in rows:
                out.write(json.dumps({"idem_key": key, "source_key": source, "cursor": cursor, "reason": reason,
                                      "excerpt": self._redact(excerpt or "")}, ensure_ascii=False) + "\n")

    def finish(self, plan: dict[str, Any], concurrency: int) -> None:
        self._out.close()
        endpoint = self.endpoint
        rate = endpoint.rate
        if rate is not None:
            seconds: float | None = round(max(0, self.requests - 1) * rate.interval, 1)
            pace = (f"{rate.requests} requests per {rate.per_seconds:g}s documented, spaced at "
                    f"{rate.interval:.3g}s: at least {seconds}s")
        else:
            seconds = None
            pace = (f"no documented rate limit: bounded by the vendor's answers ({concurrency} in flight at "
                    "most, adaptive)")
        not_checked = []
        if type(endpoint).item_checker is not Endpoint.item_checker:
            not_checked.append(f"{endpoint.qualified_name} checks items against the vendor at run time "
                               "(e.g. GradeMyPage's active experiments): not checked in a dry run")
        if endpoint.steps:
            not_checked.append("multi-step items: only the first request of each item is shown; uploads "
                               "and finalize follow the vendor's answers")
        if endpoint.vendor == "flux":
            not_checked.append("Flux bodies carry per-run markers (tags.syncline_batch, tags.syncline_claim) "
                               "that a real run sets from its own run and claim ids")
        not_checked.append("refusals only the vendor can make (its answers) are not known before sending")
        plan.update({
            "endpoint": endpoint.qualified_name, "url": self.url, "requests": self.requests,
            "request_bytes": self.bytes, "estimated_seconds": seconds, "pacing": pace,
            "not_checked": not_checked, "files": {"requests": "requests.jsonl", "rejected": "rejected.jsonl"},
        })
        (self.folder / "plan.json").write_text(json.dumps(plan, indent=2, ensure_ascii=False) + "\n")

"""The docs that are generated or checked: docs/vendors.md (from the endpoint declarations), the vendor API
copies in docs/vendor-api/, and the links and names the hand-written guides mention."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from connectors import docgen
from connectors.engine.endpoint import Credential, Endpoint, Field, Rate, Rule, Vendor
from connectors.sandbox.base import Fault
from connectors.sandbox.emulators import emulator_classes
from connectors.vendors import vendors

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDES = ("adding-a-vendor.md", "scheduling.md", "sandbox.md", "vendors.md", "vendor-api/README.md")


def _section(text: str, endpoint: Endpoint) -> str:
    """The part of the page about one endpoint: from its heading to the next heading of level 2 or 3."""
    start = text.index(f"### `{endpoint.qualified_name}`")
    following = [m.start() for m in re.finditer(r"^#{2,3} ", text[start + 4:], re.M)]
    return text[start:start + 4 + following[0]] if following else text[start:]


def test_checked_in_vendors_md_is_what_the_generator_writes():
    expected = docgen.render()
    actual = (DOCS / "vendors.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/vendors.md is stale: run `python -m connectors.docgen` and commit it"


def test_every_endpoint_of_every_vendor_is_documented_with_its_declaration():
    text = docgen.render()
    registered = vendors()
    assert registered, "connectors.vendors registers no vendor"
    for vendor in registered.values():
        assert f"## {vendor.title}\n" in text
        assert f"`{vendor.base_url_env}`, default `{vendor.default_base_url}`" in text
        for cred in vendor.credentials:
            assert f"`{cred.env}`" in text
        for endpoint in docgen.documented_endpoints(vendor):
            section = _section(text, endpoint)
            assert f"`{endpoint.method} {endpoint.path}`" in section
            assert f"max items per request: {endpoint.max_items:,}" in section
            assert f"{endpoint.max_body_bytes:,} bytes" in section
            assert endpoint.description in section
            for field in endpoint.fields:
                assert f"| `{field.name}` |" in section, f"{endpoint.qualified_name}: field {field.name}"
                if field.max_length is not None:
                    assert f"{field.max_length:,}" in section
                for choice in field.choices or ():
                    assert f"`{choice}`" in section
            for rule in endpoint.rules:
                assert f"- {docgen.readable_reason(rule.reason)}\n" in section
                assert docgen.readable_sql(rule.when) in section
            if endpoint.rate is not None:
                assert f"{endpoint.rate.requests} requests per" in section
                assert f"{endpoint.rate.safety:.0%}" in section
            if endpoint.idempotency_field:
                assert f"idempotency field: `{endpoint.idempotency_field}`" in section
            assert f"multi-step: {'yes' if endpoint.steps else 'no'}" in section
            if endpoint.single is not None:
                assert f"single-item sibling: [`{endpoint.single.name}`]" in section
                assert f"fewer than {endpoint.single_below} items" in section
            assert "- options:" in section


def test_secrets_never_appear_only_their_variable_names():
    text = docgen.render()
    for name, cls in emulator_classes().items():
        for value in cls.keys.values():
            assert value not in text, f"a {name} sandbox key is in docs/vendors.md"


def test_notes_name_only_registered_vendors():
    assert set(docgen.NOTES) <= set(vendors())


def test_check_mode_fails_on_a_stale_file_and_passes_on_a_fresh_one(tmp_path, capsys):
    target = tmp_path / "vendors.md"
    target.write_text("# Vendors\n\nhand-edited\n", encoding="utf-8")
    assert docgen.main(["--check", "--output", str(target)]) == 1
    captured = capsys.readouterr()
    assert "hand-edited" in captured.out and "python -m connectors.docgen" in captured.err
    assert docgen.main(["--output", str(target)]) == 0
    assert docgen.main(["--check", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == docgen.render()


class _Plain(Endpoint):
    pass


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Undeclared(Endpoint):
    flag: bool = False

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        return dataclasses.replace(self, flag=bool(options.get("flag")))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Declared(_Undeclared):
    OPTIONS: ClassVar[Mapping[str, str]] = {"flag": "true: do the thing"}

    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"Authorization": f"Token {credentials['token']}"}


def _fake_vendor() -> Vendor:
    single = _Plain(vendor="fake", name="one", path="/one", max_items=1)
    endpoints = [
        _Plain(vendor="fake", name="plain", path="/plain", description="Plain.",
               fields=(Field("id", required=True), Field("kind", choices=("a", "b")),
                       Field("n", "integer", min_value=1, max_value=9),
                       Field("note", required_when='"kind" = \'b\'', required_because="for kind b")),
               rules=(Rule(when="CAST(\"n\" AS VARCHAR) = '3'", reason="'n is ' || n || ', not allowed'"),),
               rate=Rate(5, 2.0), single=single, single_below=3, idempotency_field="dedup_key"),
        _Undeclared(vendor="fake", name="undeclared", path="/u"),
        _Declared(vendor="fake", name="declared", path="/d", method="PUT", credential="token"),
    ]
    return Vendor(name="fake", title="Fake", env_prefix="FAKE", default_base_url="https://fake.example",
                  credentials=(Credential("api_key", "FAKE_API_KEY"), Credential("token", "FAKE_TOKEN")),
                  endpoints={e.name: e for e in endpoints})


def test_a_new_vendor_renders_options_auth_limits_and_its_unregistered_single_sibling():
    vendor = _fake_vendor()
    text = docgen.render({"fake": vendor})
    plain = _section(text, vendor.endpoints["plain"])
    assert "options: none" in plain
    assert "5 requests per 2 s per credential; paced at 95%" in plain
    assert "| `n` | integer | no |  |  | ≥ 1, ≤ 9 |" in plain
    assert "| `kind` | text | no |  | `a`, `b` |  |" in plain
    assert "only for kind b: `kind = 'b'`" in plain
    assert "- n is …, not allowed\n  - when `n = '3'`" in plain
    assert "single-item sibling: [`one`](#fake-one)" in plain
    assert "### `fake.one`" in text  # the sibling is not in vendor.endpoints, yet documented
    assert "options: see the module docstring" in _section(text, vendor.endpoints["undeclared"])
    declared = _section(text, vendor.endpoints["declared"])
    assert "- `flag`: true: do the thing" in declared
    assert "auth: header `Authorization: Token $FAKE_TOKEN`" in declared
    assert "`PUT /d`" in declared


def test_readable_sql_drops_wrappers_and_keeps_literals():
    sql = """NULLIF(trim(CAST("pathname" AS VARCHAR)), '') IS NOT NULL AND x = 'CAST("a" AS VARCHAR)'"""
    assert docgen.readable_sql(sql) == """pathname IS NOT NULL AND x = 'CAST("a" AS VARCHAR)'"""
    assert docgen.readable_reason("'a || b ' || left(x, 6) || ' it''s'") == "a || b … it's"


def test_vendor_api_copies_match_their_checksums_and_every_vendor_has_one():
    folder = DOCS / "vendor-api"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    listed: dict[str, str] = {}
    for line in readme.splitlines():
        document, digest = re.search(r"\[([\w-]+\.md)\]", line), re.search(r"`([0-9a-f]{64})`", line)
        if document and digest:
            listed[document.group(1)] = digest.group(1)
    documents = sorted(p.name for p in folder.glob("*.md") if p.name != "README.md")
    assert sorted(listed) == documents
    for name, checksum in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == checksum, f"{name} was edited"
    for vendor in vendors():
        assert f"{vendor}.md" in documents


def test_sandbox_doc_covers_every_fault_mode_key_and_control_route():
    text = (DOCS / "sandbox.md").read_text(encoding="utf-8")
    for mode in Fault.MODES:
        assert f"`{mode}`" in text, f"fault mode {mode} is not in docs/sandbox.md"
    for name, cls in emulator_classes().items():
        assert f"`/{name}`" in text
        for value in cls.keys.values():
            assert value in text, f"the {name} sandbox key is not in docs/sandbox.md"
    for route in ("POST /_sandbox/faults", "DELETE /_sandbox/faults", "POST /_sandbox/reset",
                  "GET /_sandbox/records", "GET /_sandbox/stats", "POST /_sandbox/control"):
        assert route in text


@pytest.mark.parametrize("name", GUIDES)
def test_guides_link_and_name_only_files_that_exist(name):
    path = DOCS / name
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (path.parent / target).resolve().exists(), f"{name} links to a missing {target}"
    for mentioned in re.findall(r"`((?:connectors|pipelines|tests|deploy|benchmarks)/[\w./-]+\.(?:py|yaml))`", text):
        assert (ROOT / mentioned).exists(), f"{name} names a missing {mentioned}"

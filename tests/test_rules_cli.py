"""`imap-proxy rules check|schema|docs`, `explain` and `fingerprint`, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imap_proxy.cli import main
from imap_proxy.quirks.model import load_rules
from imap_proxy.rules_cli import render_rules_reference

REPO = Path(__file__).resolve().parent.parent


def test_rules_check_lists_every_packaged_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check"]) == 0
    out = capsys.readouterr().out
    for loaded in load_rules().rules:
        assert loaded.rule.id in out
    assert "matches: clients thunderbird" in out
    assert out.rstrip().endswith("valid")


def test_rules_check_reports_each_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.yaml").write_text(
        "rules:\n  - id: a-rule\n    summary: s\n    evidence: {fires: f, silent: s}\n"
        "    actions: [{type: capabilities, add: oops}]\n"
    )
    assert main(["rules", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "x.yaml: rule a-rule: actions.0.capabilities.add" in err
    assert "Traceback" not in err


def test_rules_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "rules" in schema["properties"]


def test_docs_rules_md_is_generated_from_the_rule_files() -> None:
    text = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    assert text == render_rules_reference(load_rules()), (
        "docs/rules.md is stale: run `imap-proxy rules docs > docs/rules.md`"
    )


def test_explain_names_profile_and_active_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "explain",
            "--command",
            "58 capability",
            "--command",
            "59 login alice secret",
            "--id",
            "name=Thunderbird",
            "--id",
            "version=128.5.0",
            "--upstream-capabilities",
            "IMAP4rev1 IDLE",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "client: thunderbird" in out
    assert "tb-extra-mailbox-sep" in out and "answer-id-in-every-state" in out
    assert "delay-newmail" not in out  # disabled by default
    assert "secret" not in out


def test_fingerprint_of_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.txt"
    trace.write_text(
        "S: * OK ready\nC: 1.854 CAPABILITY\nS: 1.854 OK\n"
        'C: 2.854 ID ("name" "Mac OS X Mail" "version" "16.0 (3696.80.82.1.1)" '
        '"os" "Mac OS X" "vendor" "Apple Inc.")\nS: 2.854 OK\n'
    )
    assert main(["fingerprint", str(trace)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("client: apple-mail")
    assert main(["fingerprint", str(tmp_path / "missing.txt")]) == 2

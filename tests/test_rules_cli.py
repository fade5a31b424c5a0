"""`imap-proxy rules check|schema|docs`, `explain` and `fingerprint`, run in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imap_proxy.cli import main
from imap_proxy.quirks.model import FINGERPRINT_FILE, load_rules, packaged_rules_dir
from imap_proxy.rules_cli import render_rules_reference

REPO = Path(__file__).resolve().parent.parent
MACOS_TRACE = (
    "S: * OK ready\nC: 1.854 CAPABILITY\nS: 1.854 OK\n"
    'C: 2.854 ID ("name" "Mac OS X Mail" "version" "16.0 (3696.80.82.1.1)" '
    '"os" "Mac OS X" "vendor" "Apple Inc.")\nS: 2.854 OK\n'
)


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
    trace.write_text(MACOS_TRACE)
    assert main(["fingerprint", str(trace)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("client: apple-mail")


# --- bad input: one line per problem on stderr, exit 2, never a traceback ---------------


def assert_refused(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert lines and all(line.startswith("imap-proxy: ") for line in lines), captured.err
    for text in expected:
        assert text in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"X: junk\n", "not a transcript: line 1: no C:/S:/c:/s:/>c:/>s:/!: prefix: 'X: junk'"),
        (b"\xff\xfe\x00\x01", "not a transcript: not UTF-8 text"),
        (b"", "not a transcript: no client (C:) lines"),
        (b"# only a comment\nS: * OK ready\n", "not a transcript: no client (C:) lines"),
        (
            b"C: a1 APPEND INBOX {99999999999}\nC: x\n",
            "client side cannot be framed: literal of 99999999999 octets exceeds the limit",
        ),
    ],
    ids=["no-prefix", "binary", "empty", "no-client-lines", "unframeable"],
)
def test_fingerprint_of_a_malformed_trace_exits_2(
    content: bytes, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.txt"
    trace.write_bytes(content)
    assert main(["fingerprint", str(trace)]) == 2
    assert_refused(capsys, f"imap-proxy: {trace}: {expected}")


def test_fingerprint_of_a_missing_file_or_a_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fingerprint", str(tmp_path / "missing.txt")]) == 2
    assert_refused(capsys, "missing.txt: cannot read: No such file or directory")
    assert main(["fingerprint", str(tmp_path)]) == 2
    assert_refused(capsys, f"{tmp_path}: cannot read: Is a directory")


def test_fingerprint_uses_the_definitions_of_a_rules_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(packaged_rules_dir(), rules)
    definitions = rules / FINGERPRINT_FILE
    for path in rules.glob("*.yaml"):  # the definitions and the rules that name the family
        path.write_text(path.read_text().replace("apple-mail", "mac-mail"))
    trace = tmp_path / "t.txt"
    trace.write_text(MACOS_TRACE)
    assert main(["fingerprint", "--rules", str(rules), str(trace)]) == 0
    assert capsys.readouterr().out.startswith("client: mac-mail")
    definitions.write_text("families: [\n")
    assert main(["fingerprint", "--rules", str(rules), str(trace)]) == 2
    assert_refused(capsys, "fingerprints.yaml", "invalid YAML")


@pytest.mark.parametrize(
    ("file_name", "content", "expected"),
    [
        ("x.yaml", "rules: [\n", "x.yaml: cannot read: while parsing a flow node"),
        ("x.yaml", "\udcff", "x.yaml: cannot read: 'utf-8' codec can't decode"),
        ("x.toml", "rules = [", "x.toml: cannot read:"),
        (FINGERPRINT_FILE, "families: 7\n", "fingerprints.yaml"),
        (
            "x.yaml",
            "rules:\n  - id: a-rule\n    summary: s\n    evidence: {fires: f, silent: s}\n"
            "    match: {client_families: [macos-mail]}\n"
            "    actions: [{type: lsub_noselect}]\n",
            "x.yaml: rule a-rule: match.client_families: unknown family 'macos-mail'",
        ),
    ],
    ids=["bad-yaml", "not-utf8", "bad-toml", "bad-fingerprints", "unknown-family"],
)
def test_rules_check_explain_and_run_refuse_an_invalid_directory(
    file_name: str,
    content: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / file_name).write_bytes(content.encode("utf-8", "surrogateescape"))
    assert main(["rules", "check", str(tmp_path)]) == 2
    assert_refused(capsys, expected)
    assert main(["explain", "--rules", str(tmp_path), "--command", "1 CAPABILITY"]) == 2
    assert_refused(capsys, expected)
    assert main(["run", "--rules", str(tmp_path), "--listen", "127.0.0.1:0"]) == 2
    assert_refused(capsys, expected)


def test_rules_check_of_a_missing_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rules", "check", str(tmp_path / "nowhere")]) == 2
    assert_refused(capsys, "nowhere: not a directory")
    assert main(["rules", "docs", str(tmp_path / "nowhere")]) == 2
    assert_refused(capsys, "nowhere: not a directory")


def test_explain_refuses_an_id_field_without_a_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--id", "name=Thunderbird", "--id", "version"]) == 2
    assert_refused(capsys, "--id 'version': expected FIELD=VALUE")

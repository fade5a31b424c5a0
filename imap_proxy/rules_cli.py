"""The rule and fingerprint commands of the CLI: rules check/schema/docs, explain, fingerprint.

How this works: `add_rule_commands()` registers the subcommands on the main parser; each
handler loads what it needs (a rules directory, the fingerprint definitions, a trace),
prints, and returns an exit code. `explain` builds the same `Fingerprinter` and
`SessionRules` a live session uses, feeds them what the operator says the client sent and
what the upstream announces, and prints the profile and the rules that would be active.
`rules docs` renders the rules reference (docs/rules.md is this command's output).
Bad input - a missing or unreadable file, an invalid rule set, a transcript that is not
one - is one line per problem on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from imap_proxy.quirks.engine import SessionRules, SessionView
from imap_proxy.quirks.fingerprint import Fingerprinter, FingerprintSet, profile_from_transcript
from imap_proxy.quirks.model import (
    FINGERPRINT_FILE,
    Rule,
    RuleLoadError,
    RuleSet,
    rules_json_schema,
)
from imap_proxy.quirks.store import QuirkSnapshot, load_snapshot
from imap_proxy.quirks.trace import parse_trace
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.transcript import CLIENT_SENDS

EXIT_OK = 0
EXIT_INVALID = 2


def add_rule_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = commands.add_parser(
        "rules",
        help="validate, list and document quirk rules",
        description="Work with quirk rule files (YAML/TOML) without starting the proxy.",
    )
    rules.set_defaults(handler=lambda _args: _print_help(rules))
    sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    check = sub.add_parser(
        "check",
        help="validate a rules directory and print what each rule matches",
        description="Validate every rule file of DIR (default: the packaged rules) and the "
        "fingerprint definitions the proxy would use with it (DIR/fingerprints.yaml, else the "
        "packaged ones), then print each rule: id, enabled, priority, what it matches and "
        "its actions. Exit 2 with one line per problem (file, rule id, field) if anything is "
        "invalid - what `imap-proxy run --rules DIR` and a SIGHUP reload would refuse.",
    )
    check.add_argument("directory", nargs="?", type=Path, help="rules directory")
    check.set_defaults(handler=_command_check)
    schema = sub.add_parser("schema", help="print the JSON Schema of a rule file")
    schema.set_defaults(handler=lambda _args: _write(rules_json_schema() + "\n"))
    docs = sub.add_parser(
        "docs", help="print the rules reference (Markdown), generated from the rule files"
    )
    docs.add_argument("directory", nargs="?", type=Path)
    docs.set_defaults(handler=_command_docs)

    explain = commands.add_parser(
        "explain",
        help="which profile and rules a given client and upstream would get",
        description="Feed the fingerprint what a client sends and the rule engine what the "
        "upstream announces; print the client profile (family, confidence, evidence) and "
        "the rules that would be active.",
        epilog=textwrap.dedent(
            """\
            example:
              imap-proxy explain --command '1.854 CAPABILITY' \\
                  --command '2.854 ID ("name" "Mac OS X Mail")' \\
                  --upstream-capabilities 'IMAP4rev1 IDLE NAMESPACE'
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument(
        "--command",
        action="append",
        default=[],
        metavar="LINE",
        help="a client command line, in order (repeatable)",
    )
    explain.add_argument(
        "--id",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an ID field the client sent after login (repeatable)",
    )
    explain.add_argument(
        "--upstream-capabilities",
        default="IMAP4rev1",
        metavar="CAPS",
        help="what the upstream announces (space separated)",
    )
    explain.add_argument("--listener", default="imap", choices=["imap", "imaps"])
    explain.add_argument("--rules", type=Path, metavar="DIR", help="rules directory")
    explain.set_defaults(handler=_command_explain)

    fingerprint = commands.add_parser(
        "fingerprint",
        help="the client profile for a recorded transcript",
        description="Read a C:/S: transcript (as the tests and the recorder write them) and "
        "print the client profile its C: lines give. Exit 2 if the file cannot be read or "
        "is not a transcript.",
    )
    fingerprint.add_argument("trace", type=Path)
    fingerprint.add_argument(
        "--rules",
        type=Path,
        metavar="DIR",
        help="use DIR/fingerprints.yaml (default: the packaged definitions)",
    )
    fingerprint.set_defaults(handler=_command_fingerprint)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_INVALID


def _write(text: str) -> int:
    sys.stdout.write(text)
    return EXIT_OK


def one_line(problem: str) -> str:
    """A problem as one line (YAML errors come with a multi-line excerpt)."""
    parts = (part.strip() for part in problem.splitlines())
    return " ".join(part for part in parts if part.strip("^"))


def _report(problems: list[str]) -> int:
    for problem in problems:
        print(f"imap-proxy: {one_line(problem)}", file=sys.stderr)
    return EXIT_INVALID


def _load_snapshot(directory: Path | None) -> QuirkSnapshot | None:
    try:
        return load_snapshot(directory)
    except RuleLoadError as error:
        _report(error.problems)
        return None


def describe_match(rule: Rule) -> str:
    match = rule.match
    parts = []
    if match.client_families is not None:
        parts.append("clients " + ", ".join(match.client_families))
    if match.min_confidence:
        parts.append(f"confidence >= {match.min_confidence}")
    if match.id_fields:
        parts.append("ID " + ", ".join(f"{k}~/{v}/" for k, v in match.id_fields.items()))
    if match.tag_pattern:
        parts.append(f"first tag ~/{match.tag_pattern}/")
    if match.upstream_capabilities_present:
        parts.append("upstream has " + " ".join(match.upstream_capabilities_present))
    if match.upstream_capabilities_absent:
        parts.append("upstream lacks " + " ".join(match.upstream_capabilities_absent))
    if match.upstream_greeting:
        parts.append(f"greeting ~/{match.upstream_greeting}/")
    if match.listeners is not None:
        parts.append("listeners " + ", ".join(match.listeners))
    return "; ".join(parts) or "every session"


def _command_check(args: argparse.Namespace) -> int:
    snapshot = _load_snapshot(args.directory)
    if snapshot is None:
        return EXIT_INVALID
    ruleset = snapshot.rules
    for loaded in ruleset.rules:
        rule = loaded.rule
        state = "enabled " if rule.enabled else "disabled"
        actions = ", ".join(action.type for action in rule.actions)
        print(f"{rule.id:28} {state} p{rule.priority:<4} {loaded.source}")
        print(f"    matches: {describe_match(rule)}")
        print(f"    actions: {actions}")
    fingerprints = snapshot.fingerprints or FingerprintSet.packaged()
    print(f"fingerprints: {len(fingerprints.scored)} families from {fingerprints.source}")
    print(f"{len(ruleset.rules)} rules, {len(ruleset.enabled)} enabled: valid")
    return EXIT_OK


def render_rules_reference(ruleset: RuleSet, fingerprints: FingerprintSet | None = None) -> str:
    fingerprints = fingerprints or FingerprintSet.packaged()
    families = ", ".join(f"`{family}`" for family in sorted(fingerprints.families))
    out = [
        "# Rules reference",
        "",
        "Generated by `imap-proxy rules docs` from the packaged rule files "
        "(`imap_proxy/rules/`); do not edit by hand. Each rule's evidence traces are in "
        "`tests/rules/traces/` and are replayed through the proxy against Dovecot by "
        "`tests/rules/test_shipped_rules.py`.",
        "",
        "Rules keyed on ID fields are explicit and the operator's choice: RFC 2971 §3 says "
        "servers must not work around client bugs from ID data, and no rule may make the "
        "proxy refuse service because of an ID.",
        "",
        "`match.client_families` names families of the fingerprint definitions "
        f"(`{FINGERPRINT_FILE}`): {families}. A rule naming any other family is refused "
        "when the rules are loaded.",
        "",
        "`imap-proxy rules check DIR` validates a rules directory as the proxy would load it. "
        "SIGHUP makes a running proxy load its rules and fingerprint definitions again: a "
        "complete, valid set replaces the old one for new sessions (sessions already open "
        "keep theirs and are never dropped); an invalid one is refused with the error log "
        "line `rules not reloaded; the previous set stays active` listing every problem. "
        "`imap_proxy_rule_reloads_total{outcome}` counts both.",
        "",
        "| rule | default | matches | actions |",
        "|---|---|---|---|",
    ]
    for loaded in ruleset.rules:
        rule = loaded.rule
        actions = ", ".join(f"`{a.type}`" for a in rule.actions)
        default = "on" if rule.enabled else "off"
        matched = describe_match(rule).replace("|", "\\|")  # a regex's `|` in a table cell
        out.append(f"| [`{rule.id}`](#{rule.id}) | {default} | {matched} | {actions} |")
    for loaded in ruleset.rules:
        rule = loaded.rule
        out += ["", f"## {rule.id}", "", rule.summary.strip(), ""]
        out.append(
            f"- file: `{loaded.source}`; enabled by default: {rule.enabled}; "
            f"priority {rule.priority}"
        )
        out.append(f"- matches: {describe_match(rule)}")
        for action in rule.actions:
            params = action.model_dump(exclude={"type"})
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no parameters"
            out.append(f"- action `{action.type}`: {shown}")
        evidence = rule.evidence
        silent_upstream = evidence.silent_upstream or evidence.upstream
        silent_faults = (
            evidence.faults if evidence.silent_faults is None else evidence.silent_faults
        )
        out.append(
            f"- fires on `{evidence.fires}` ({evidence.upstream} upstream"
            f"{_with_faults(evidence.faults)}); silent on "
            f"`{evidence.silent}` ({silent_upstream} upstream{_with_faults(silent_faults)})"
        )
        if evidence.replay_parameters:
            shown = ", ".join(f"{k}={v!r}" for k, v in evidence.replay_parameters.items())
            out.append(f"- evidence replayed with {shown}")
        if rule.references:
            out.append("- references: " + "; ".join(rule.references))
    return "\n".join(out) + "\n"


def _with_faults(faults: list[str]) -> str:
    """How an evidence replay's injected upstream anomalies read in the reference."""
    return " with injected " + ", ".join(faults) if faults else ""


def _command_docs(args: argparse.Namespace) -> int:
    snapshot = _load_snapshot(args.directory)
    if snapshot is None:
        return EXIT_INVALID
    return _write(render_rules_reference(snapshot.rules, snapshot.fingerprints))


def _command_explain(args: argparse.Namespace) -> int:
    malformed = [f"--id {field!r}: expected FIELD=VALUE" for field in args.id if "=" not in field]
    if malformed:
        return _report(malformed)
    snapshot = _load_snapshot(args.rules)
    if snapshot is None:
        return EXIT_INVALID
    fingerprints = snapshot.fingerprints or FingerprintSet.packaged()
    printer = Fingerprinter(fingerprints, listener=args.listener)
    first_tag: bytes | None = None
    for line in args.command:
        raw = line.encode()
        words = raw.split(b" ", 3)
        tag = words[0]
        first_tag = first_tag or tag
        verb = (
            b" ".join(words[1:3])
            if len(words) > 2 and words[1].upper() == b"UID"
            else (words[1] if len(words) > 1 else b"")
        )
        printer.observe_command(tag, verb, raw, authenticated=False)
    id_params: list[tuple[bytes, bytes | None]] | None = None
    if args.id:
        id_params = [(k.encode(), v.encode()) for k, _, v in (f.partition("=") for f in args.id)]
        printer.observe_id(id_params, authenticated=True)
    profile = printer.profile
    view = SessionView(
        listener=args.listener,
        family=profile.family,
        confidence=profile.confidence,
        first_tag=first_tag,
        id_params=id_params,
        upstream_capabilities=args.upstream_capabilities.split(),
    )
    engine = SessionRules(snapshot.rules, view)
    print(
        f"client: {profile.family} version={profile.version or '-'} "
        f"confidence={profile.confidence:.2f} ({profile.confidence_bucket})"
    )
    for item in profile.evidence:
        print(f"  evidence: {item}")
    print("active rules:")
    for rule_id in engine.active_rule_ids or ["(none)"]:
        print(f"  {rule_id}")
    return EXIT_OK


def _command_fingerprint(args: argparse.Namespace) -> int:
    path: Path = args.trace
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        return _report([f"{path}: cannot read: {error.strerror or error}"])
    except UnicodeDecodeError as error:
        return _report([f"{path}: not a transcript: not UTF-8 text ({error.reason})"])
    if args.rules is None:
        fingerprints = FingerprintSet.packaged()
    else:
        snapshot = _load_snapshot(args.rules)
        if snapshot is None:
            return EXIT_INVALID
        fingerprints = snapshot.fingerprints or FingerprintSet.packaged()
    try:
        lines = parse_trace(text)
        if not any(line.prefix in CLIENT_SENDS for line in lines):
            return _report([f"{path}: not a transcript: no client (C:) lines"])
        profile = profile_from_transcript(lines, fingerprints)
    except ValueError as error:
        return _report([f"{path}: not a transcript: {error}"])
    except ProtocolError as error:
        return _report([f"{path}: client side cannot be framed: {error.text}"])
    print(
        f"client: {profile.family} version={profile.version or '-'} "
        f"confidence={profile.confidence:.2f} ({profile.confidence_bucket})"
    )
    for item in profile.evidence:
        print(f"  evidence: {item}")
    return EXIT_OK

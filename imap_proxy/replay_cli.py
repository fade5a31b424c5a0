"""`imap-proxy replay TRACE [--rules DIR]`: what the client would have seen, with and without rules.

How this works: the transcript (a recording, or any C:/S: transcript) is replayed offline
twice through `imap_proxy.session.replay` — once with no quirk rules (the proxy's core
contract only), once with the rules of DIR (default: the packaged rules) — against the
recorded upstream responses. It prints a summary of both runs against what the client
received live (the transcript's `S:`/`>c:` entries), warns where a run made the session
send the upstream something other than recorded (from there on the recorded answers may
not fit what was sent), and then a unified diff of the client-visible lines: "without
rules" against "with rules" (`--diff rules`, the default) or the recording against
"with rules" (`--diff recorded`). Exit 0; 1 with `--check` when "with rules" differs from
the recording (a regression test in one command); 2 when the trace or the rules cannot
be read, with one line saying why.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
from pathlib import Path

from imap_proxy.quirks.model import RuleSet
from imap_proxy.quirks.store import load_snapshot
from imap_proxy.session.replay import ReplayResult, replay
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.transcript import TraceLine, TranscriptError, client_bytes, load

EXIT_OK = 0
EXIT_DIFFERS = 1
EXIT_INVALID = 2


def add_replay_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay_parser = commands.add_parser(
        "replay",
        help="replay a recorded session offline, with and without rules",
        description=textwrap.dedent(
            """\
            Replay a recorded session (a C:/S: transcript, as the session recorder writes
            them) through the session and rule engine, offline, against the recorded
            upstream responses. Prints what the client would have received without any
            quirk rule and with the rules of --rules (default: the packaged rules), and a
            unified diff of the two."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              imap-proxy replay recordings/20261203T101500Z-Xy3.trace
              imap-proxy replay session.trace --rules ./my-rules --diff recorded --check

            exit status: 0; 1 with --check when "with rules" differs from the recording;
            2 when the trace or the rules cannot be read. See docs/observability.md.
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay_parser.add_argument("trace", type=Path, metavar="TRACE", help="transcript file")
    replay_parser.add_argument(
        "--rules", type=Path, metavar="DIR", help="rules directory (default: the packaged rules)"
    )
    replay_parser.add_argument(
        "--diff",
        choices=["rules", "recorded"],
        default="rules",
        help="diff 'without rules' (default) or the recording against 'with rules'",
    )
    replay_parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when 'with rules' differs from what the client received live",
    )
    replay_parser.set_defaults(handler=command_replay)


def command_replay(args: argparse.Namespace) -> int:
    path: Path = args.trace
    try:
        entries = load(path)
    except OSError as error:
        return _invalid(f"{path}: cannot read: {error.strerror or error}")
    except UnicodeDecodeError:
        return _invalid(f"{path}: not UTF-8 text, so not a transcript")
    except TranscriptError as error:
        return _invalid(f"{path}: not a transcript: {error}")
    if not any(entry.prefix in ("C", "c", "S", "s") for entry in entries):
        return _invalid(f"{path}: not a transcript: nothing sent by a client or upstream")
    snapshot = load_snapshot(args.rules)  # RuleLoadError: main prints it, exits 2
    rules_name = str(args.rules) if args.rules is not None else "the packaged rules"
    try:
        without = replay(entries, rules=RuleSet.empty(), fingerprints=snapshot.fingerprints)
        with_rules = replay(entries, rules=snapshot.rules, fingerprints=snapshot.fingerprints)
    except TranscriptError as error:
        return _invalid(f"{path}: {error}")
    except ProtocolError as error:
        return _invalid(f"{path}: cannot be replayed: {error}")
    recorded = client_bytes(entries)
    out = sys.stdout
    out.write(f"replay of {path}: {len(entries)} entries\n")
    out.write(f"  recorded: the client received {len(recorded)} octets\n")
    for label, result in (("without rules", without), (f"with {rules_name}", with_rules)):
        out.write(f"  {label}: {_compare(result, recorded)}\n")
        _warn_divergence(label, result, entries)
    if args.diff == "recorded":
        a, a_name = recorded, "client received (recorded)"
    else:
        a, a_name = without.to_client, "client sees without rules"
    b, b_name = with_rules.to_client, f"client sees with {rules_name}"
    diff = list(
        difflib.unified_diff(_lines(a), _lines(b), fromfile=a_name, tofile=b_name, lineterm="")
    )
    if diff:
        out.write("\n" + "\n".join(diff) + "\n")
    else:
        out.write(f"\nno difference: {a_name} and {b_name} are the same bytes\n")
    if args.check and with_rules.to_client != recorded:
        return EXIT_DIFFERS
    return EXIT_OK


def _compare(result: ReplayResult, recorded: bytes) -> str:
    size = f"{len(result.to_client)} octets"
    if result.to_client == recorded:
        return f"{size}, the same bytes as recorded"
    offset = _first_difference(result.to_client, recorded)
    return f"{size}, differs from the recording from octet {offset} on"


def _first_difference(a: bytes, b: bytes) -> int:
    limit = min(len(a), len(b))
    return next((i for i in range(limit) if a[i] != b[i]), limit)


def _warn_divergence(label: str, result: ReplayResult, entries: list[TraceLine]) -> None:
    divergence = result.upstream_divergence
    if divergence is None:
        return
    where = f"line {divergence.line}" if divergence.line else "the end of the recording"
    sys.stdout.write(
        f"    ! {label}: the session sent the upstream other bytes than recorded, at {where}:\n"
        f"        recorded: {_show(divergence.recorded)}\n"
        f"        replayed: {_show(divergence.replayed)}\n"
        "      the recorded upstream answers what was recorded, not what this run sent: what\n"
        "      the client sees after that point is not what it would see live.\n"
    )


def _show(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace").rstrip("\r\n")
    return (text[:100] + "...") if len(text) > 100 else (text or "(nothing)")


def _lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", "backslashreplace")
    return text.split("\r\n")[:-1] if text.endswith("\r\n") else text.split("\r\n")


def _invalid(message: str) -> int:
    print(f"imap-proxy: {message}", file=sys.stderr)
    return EXIT_INVALID

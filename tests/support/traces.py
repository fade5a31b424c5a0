"""Client traces replayed through the real proxy against a real Dovecot.

How this works: a trace (tests/rules/traces/*.txt) is what one client sends, one command
a line, in the transcript format of `transcript.py` restricted to what a client does:

    C: 58 login {user} {password}   a command; {user}, {password} and {sasl_plain} (the
                                     AUTHENTICATE PLAIN initial response) are filled in;
                                     {crlf} is a bare CRLF sent just before the command
                                     (iOS Mail's empty lines)
    X: append INBOX                  set-up done directly on Dovecot at that point:
                                     `append MAILBOX`, `subscribe MAILBOX`,
                                     `stale-subscription NAME` (NAME.Child exists,
                                     NAME is subscribed but only a \\Noselect parent),
                                     `expunge-elsewhere SET` (a second session selects
                                     INBOX and expunges those message numbers),
                                     `append-deleted MAILBOX` (a message another device
                                     flagged \\Deleted)
    W: 10 * OK Still here            wait up to 10 s for a line holding that text (what
                                     came by then is kept, whether it came or not)
    C: DONE                          ends the IDLE before it; waits for the IDLE's answer
    E: <regex>                       the client-visible bytes must match it when the
                                     trace's rule fires
    # …                              a comment

`run_trace()` opens a raw connection, sends each command, waits for its tagged answer
(`+` for IDLE; a `* BYE` ends the trace), and returns every byte the client received.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RawClient, RunningProxy

TRACES = Path(__file__).parent.parent / "rules" / "traces"


@dataclass
class Trace:
    name: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # ("C"|"X"|"W", text)
    expect: list[str] = field(default_factory=list)


def load_trace(name: str) -> Trace:
    trace = Trace(name)
    for raw in (TRACES / name).read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        prefix, _, text = raw.partition(": ")
        if prefix in ("C", "X", "W"):
            trace.steps.append((prefix, text))
        elif prefix == "E":
            trace.expect.append(text)
        else:
            raise ValueError(f"{name}: bad trace line {raw!r}")
    return trace


def _fill(text: str, user: MailUser) -> str:
    plain = base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode()
    return (
        text.replace("{user}", user.name)
        .replace("{password}", user.password)
        .replace("{sasl_plain}", plain)
        .replace("{crlf}", "\r\n")
    )


def _setup(step: str, upstream: DovecotInstance, user: MailUser) -> None:
    verb, _, argument = step.partition(" ")
    if verb == "append":
        upstream.append(user.name, b"Subject: trace\r\n\r\narrived\r\n", argument)
    elif verb == "append-deleted":  # another device's deletion, not yet expunged
        upstream.append(user.name, b"Subject: trace\r\n\r\nelsewhere\r\n", argument, "\\Deleted")
    elif verb in ("subscribe", "stale-subscription"):
        direct = upstream.imap(user.name)
        try:
            if verb == "stale-subscription":
                direct.create(f"{argument}.Child")
                direct.subscribe(f"{argument}.Child")
            else:
                direct.subscribe(argument)
        finally:
            direct.logout()
        if verb == "stale-subscription":
            # Left from an earlier life of the folder: Dovecot no longer lets one
            # subscribe a name that does not exist, so the file is written as it was.
            subscriptions = upstream.mail_root / user.name / "Maildir" / "subscriptions"
            subscriptions.write_bytes(subscriptions.read_bytes() + argument.encode() + b"\n")
    elif verb == "expunge-elsewhere":
        direct = upstream.imap(user.name)
        try:
            direct.select("INBOX")
            direct.store(argument, "+FLAGS.SILENT", "(\\Deleted)")
            direct.expunge()
        finally:
            direct.logout()
    else:
        raise ValueError(f"unknown trace set-up {step!r}")


def run_trace(
    trace: Trace, proxy: RunningProxy, upstream: DovecotInstance, user: MailUser
) -> bytes:
    with proxy.raw() as raw:
        received = raw.read_line()
        idle_tag = b""
        for kind, text in trace.steps:
            if kind == "X":
                _setup(text, upstream, user)
                continue
            if kind == "W":
                received += _wait_for(raw, text)
                continue
            line = _fill(text, user)
            tag = line.rsplit("\r\n", 1)[-1].split(" ", 1)[0].encode()
            if line.upper() == "DONE":
                tag = idle_tag
            raw.send(line.encode() + b"\r\n")
            idle = line.upper().endswith(" IDLE")
            if idle:
                idle_tag = tag
            while True:
                answer = raw.read_line()
                received += answer
                if answer.startswith(b"* BYE "):
                    return received
                if answer.startswith(tag + b" ") or (idle and answer.startswith(b"+")):
                    break
        return received


def _wait_for(raw: RawClient, step: str) -> bytes:
    """Lines until one holds the text, or the step's seconds are up."""
    seconds, _, text = step.partition(" ")
    deadline = time.monotonic() + float(seconds)
    received = b""
    previous = raw.sock.gettimeout()
    try:
        while (left := deadline - time.monotonic()) > 0:
            raw.sock.settimeout(left)
            try:
                line = raw.read_line()
            except TimeoutError:
                break
            received += line
            if text.encode() in line:
                break
    finally:
        raw.sock.settimeout(previous)
    return received


def expectations_met(trace: Trace, received: bytes) -> list[str]:
    """The E: patterns the received bytes do not match."""
    text = received.decode("utf-8", "replace")
    return [pattern for pattern in trace.expect if not re.search(pattern, text)]

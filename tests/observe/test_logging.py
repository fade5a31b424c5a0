"""Structured logging: JSON and console output on stderr, and secrets that never appear.

How this works: each test configures logging for real (structlog and the stdlib bridge) and
reads what reached stderr through pytest's `capsys`; a fixture resets both afterwards so no
test sees another's configuration.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from imap_proxy.config import LogFormat
from imap_proxy.observe.logging import (
    REDACTED,
    configure_logging,
    get_logger,
    is_secret_key,
    redact_command_line,
    reset_logging,
    user_label,
)

SECRET = "hunter2-s3cret"


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    reset_logging()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_output_has_the_standard_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON, "info")
    get_logger("imap_proxy.net.server").info("listening", address="127.0.0.1:1143", port=1143)
    captured = capsys.readouterr()
    assert captured.out == ""
    [event] = json_lines(captured.err)
    assert event["event"] == "listening"
    assert event["level"] == "info"
    assert event["logger"] == "imap_proxy.net.server"
    assert event["address"] == "127.0.0.1:1143"
    assert event["port"] == 1143
    assert event["timestamp"].endswith("Z")
    timestamp = datetime.fromisoformat(event["timestamp"])
    assert timestamp.utcoffset() == timedelta(0)


class _Shown:
    def __structlog__(self) -> str:
        return "shown its own way"


def test_json_shows_values_it_cannot_encode_by_repr_or_their_own_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(LogFormat.JSON, "info")
    get_logger("imap_proxy.test").info(
        "odd values", path=Path("/etc/imap-proxy"), shown=_Shown(), text="é\n", number=1.5
    )
    [event] = json_lines(capsys.readouterr().err)
    assert event["path"] == repr(Path("/etc/imap-proxy"))
    assert event["shown"] == "shown its own way"
    assert event["text"] == "é\n" and event["number"] == 1.5


def test_level_filters_lower_events(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON, "warning")
    log = get_logger("t")
    log.info("dropped")
    log.debug("dropped too")
    log.warning("kept")
    log.error("kept too")
    events = json_lines(capsys.readouterr().err)
    assert [event["event"] for event in events] == ["kept", "kept too"]
    assert [event["level"] for event in events] == ["warning", "error"]


def test_logger_created_before_configuration_follows_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    early = get_logger("imap_proxy.early")  # as a module-level logger would be
    configure_logging(LogFormat.JSON, "debug")
    early.debug("after")
    [event] = json_lines(capsys.readouterr().err)
    assert event["event"] == "after"
    assert event["logger"] == "imap_proxy.early"


def test_bound_values_appear(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON, "info")
    get_logger("t", session="s-1").bind(client="outlook").info("command")
    [event] = json_lines(capsys.readouterr().err)
    assert event["session"] == "s-1"
    assert event["client"] == "outlook"


def test_console_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.CONSOLE, "info")
    get_logger("imap_proxy.cli").info("starting", upstream="10.0.0.1:993")
    line = capsys.readouterr().err.strip()
    assert "\x1b[" not in line  # no colours when stderr is not a terminal
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[info\s*\] starting\s", line), line
    assert "[imap_proxy.cli]" in line
    assert "upstream=10.0.0.1:993" in line


def test_stdlib_records_share_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON, "info")
    logging.getLogger("some.library").warning("disk %s", "full")
    logging.getLogger("some.library").debug("below the level")
    [event] = json_lines(capsys.readouterr().err)
    assert event == {
        "event": "disk full",
        "level": "warning",
        "logger": "some.library",
        "timestamp": event["timestamp"],
    }


def test_reconfiguring_replaces_the_stdlib_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.CONSOLE, "info")
    configure_logging(LogFormat.JSON, "info")
    logging.getLogger("x").error("once")
    assert len(json_lines(capsys.readouterr().err)) == 1


@pytest.mark.parametrize("log_format", list(LogFormat))
def test_secret_keys_never_reach_output(
    capsys: pytest.CaptureFixture[str], log_format: LogFormat
) -> None:
    configure_logging(log_format, "debug")
    log = get_logger("t")
    log.info(
        "login",
        user="bob",
        password=SECRET,
        Authorization=f"Bearer {SECRET}",
        access_token=SECRET,
        client_secret=SECRET,
        credentials={"user": "bob", "pass": SECRET},
        auth_data=SECRET,
        nested={"deep": [{"newPassword": SECRET}]},
    )
    log.bind(pass_=SECRET, passwd=SECRET).warning("bound")
    logging.getLogger("lib").warning("stdlib", extra={"token": SECRET})
    try:
        password = SECRET
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    assert password
    output = capsys.readouterr().err
    assert "bob" in output  # the event was written, only the secrets were removed
    assert REDACTED in output
    assert SECRET not in output


def test_secret_key_names() -> None:
    for key in (
        "password",
        "Password",
        "pass",
        "user_pass",
        "passwd",
        "apiToken",
        "token",
        "secret",
        "authorization",
        "credentials",
        "auth_data",
        "sasl_auth_data",
    ):
        assert is_secret_key(key), key
    for key in ("user", "passthrough", "bypass", "compass", "author", "mailbox", "command"):
        assert not is_secret_key(key), key


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a1 LOGIN user secret\r\n", "a1 LOGIN user [redacted]"),
        (b"a1 login user secret", "a1 login user [redacted]"),
        (b'a1 LOGIN "john smith" "pass word"\r\n', 'a1 LOGIN "john smith" [redacted]'),
        (b'a1 LOGIN "a\\"b" x', 'a1 LOGIN "a\\"b" [redacted]'),
        (b"a1 LOGIN user {6}\r\n", "a1 LOGIN user [redacted]"),
        (b"a1 LOGIN {4}\r\n", "a1 LOGIN {4}"),
        (b"a2 AUTHENTICATE PLAIN AGJvYgBodW50ZXIy\r\n", "a2 AUTHENTICATE PLAIN [redacted]"),
        (
            b"a2 authenticate XOAUTH2 dXNlcj1ib2IBYXV0aD1CZWFyZXIgdG9rZW4BAQ==",
            "a2 authenticate XOAUTH2 [redacted]",
        ),
        (b"a2 AUTHENTICATE PLAIN =\r\n", "a2 AUTHENTICATE PLAIN [redacted]"),
        (b"a2 AUTHENTICATE PLAIN\r\n", "a2 AUTHENTICATE PLAIN"),
        (b"a3 SELECT INBOX\r\n", "a3 SELECT INBOX"),
        (b"a4 UID FETCH 1:* (FLAGS)\r\n", "a4 UID FETCH 1:* (FLAGS)"),
        (b"a5 NOOP\r\n", "a5 NOOP"),
        (b"a6 SELECT caf\xe9\r\n", "a6 SELECT caf\\xe9"),
    ],
)
def test_redact_command_line(line: bytes, expected: str) -> None:
    assert redact_command_line(line) == expected


def test_redact_command_line_can_hash_the_user() -> None:
    redacted = redact_command_line(b'a1 LOGIN "bob" secret', hash_user=True)
    assert redacted == f"a1 LOGIN {user_label('bob', True)} [redacted]"
    assert "bob" not in redacted


def test_user_label() -> None:
    assert user_label("bob@example.org", False) == "bob@example.org"
    hashed = user_label("bob@example.org", True)
    assert re.fullmatch(r"u:[0-9a-f]{12}", hashed)
    assert hashed == user_label("bob@example.org", True)  # stable
    assert hashed != user_label("Bob@example.org", True)


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        configure_logging(LogFormat.JSON, "verbose")

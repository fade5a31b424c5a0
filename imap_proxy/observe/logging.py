"""Structured logging: structlog to stderr, as JSON or for a console, with secrets redacted.

How this works: `configure_logging` installs one structlog pipeline —

    contextvars -> level -> logger name -> ISO timestamp (UTC) -> stack/exception info
    -> redaction -> JSON renderer | console renderer

— and routes the standard library's `logging` records (from third-party code) through the
same tail via `structlog.stdlib.ProcessorFormatter`, so every line on stderr has one shape.
Levels below the configured one are dropped by structlog's filtering bound logger, which is
cheap. Output goes to whatever `sys.stderr` is at the time of writing (so test capture works).

Secrets never reach the renderer: `redact_secrets` replaces the value of any event key
named like a credential (password, pass, passwd, secret, token, authorization, credentials,
auth_data; any case, also inside nested dicts/lists) with "[redacted]". Command lines are
logged only through `redact_command_line`, which keeps the tag, verb and user name of LOGIN
and the mechanism of AUTHENTICATE and drops the rest; SASL continuation lines from a client
are never logged at all (that is the caller's rule). `user_label` gives the user name, or a
short stable hash of it when `log.hash_user` is on.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from imap_proxy.config import LogFormat

REDACTED = "[redacted]"
LOGGER_NAME_KEY = "logger"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# A key is secret when one of its words (split on _ - . and camelCase) is one of these, or
# when it contains one of the unambiguous stems anywhere ("newPassword", "apitoken").
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pass", "secret", "token", "authorization", "credentials", "credential"}
)
_SECRET_STEMS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "credential",
    "auth_data",
)
_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=1024)  # log keys are few; every event asks for each of them
def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    if any(stem in lowered for stem in _SECRET_STEMS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD_SPLIT.split(key) if word)


_SCALARS = (str, int, float, bool, type(None))  # nothing inside to redact


def _redact_value(value: Any) -> Any:
    if type(value) in _SCALARS:  # most values; skips the abstract Mapping check
        return value
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else _redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(item) for item in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: credential-named keys (at any depth) become "[redacted]"."""
    for key in list(event_dict):
        if is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def user_label(user: str, hash_user: bool) -> str:
    """The user name as logs show it: itself, or `u:` + 12 hex digits of its SHA-256."""
    if not hash_user:
        return user
    return "u:" + hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:12]


# --- command lines ----------------------------------------------------------------------------

_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"')
_LITERAL = re.compile(rb"~?\{[0-9]+[+-]?\}")


def _first_argument(rest: bytes) -> tuple[bytes, bytes]:
    """Split `rest` into its first IMAP argument (atom, quoted or literal marker) and the rest."""
    for pattern in (_QUOTED, _LITERAL):
        match = pattern.match(rest)
        if match:
            return rest[: match.end()], rest[match.end() :]
    head, _, tail = rest.partition(b" ")
    return head, (b" " + tail if tail else b"")


def _unquote(argument: bytes) -> str:
    text = argument.decode("utf-8", "backslashreplace")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def redact_command_line(line: bytes, *, hash_user: bool = False) -> str:
    """A client command line fit for a debug log: LOGIN passwords and SASL data removed.

    `a1 LOGIN user secret` -> `a1 LOGIN user [redacted]`;
    `a2 AUTHENTICATE PLAIN dXNlcg==` -> `a2 AUTHENTICATE PLAIN [redacted]`.
    With `hash_user`, the LOGIN user name is shown as `user_label(name, True)`.
    Other lines are returned decoded (invalid UTF-8 escaped), without the CRLF.
    """
    line = line.rstrip(b"\r\n")
    parts = line.split(b" ", 2)
    if len(parts) < 3:
        return line.decode("utf-8", "backslashreplace")
    tag, verb, rest = parts
    verb_upper = verb.upper()
    prefix = tag.decode("utf-8", "backslashreplace") + " " + verb.decode("ascii", "replace")
    if verb_upper == b"LOGIN":
        user, after = _first_argument(rest)
        shown = user.decode("utf-8", "backslashreplace")
        if hash_user and not _LITERAL.fullmatch(user):
            shown = user_label(_unquote(user), True)
        return f"{prefix} {shown} {REDACTED}" if after.strip() else f"{prefix} {shown}"
    if verb_upper == b"AUTHENTICATE":
        mechanism, after = _first_argument(rest)
        shown = mechanism.decode("utf-8", "backslashreplace")
        return f"{prefix} {shown} {REDACTED}" if after.strip() else f"{prefix} {shown}"
    return line.decode("utf-8", "backslashreplace")


# --- configuration ----------------------------------------------------------------------------


class _CurrentStderr:
    """A structlog logger writing each line to the current `sys.stderr`; knows its name."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


_WRITER = _CurrentStderr()


def _writer_factory(*args: Any) -> _CurrentStderr:
    # structlog.get_logger(name) passes its positional arguments here.
    return _CurrentStderr(str(args[0])) if args else _WRITER


class _StderrHandler(logging.Handler):
    """A stdlib handler for foreign records, writing to the current `sys.stderr`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _WRITER.msg(self.format(record))
        except Exception:  # pragma: no cover - logging must not raise
            self.handleError(record)


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault(LOGGER_NAME_KEY, name)
    return event_dict


def _renderer(log_format: LogFormat) -> list[Processor]:
    if log_format is LogFormat.JSON:
        # Never the frames' local variables: they may hold credentials.
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        return [
            structlog.processors.ExceptionRenderer(tracebacks),
            structlog.processors.JSONRenderer(),
        ]
    colors = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return [
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    ]


def configure_logging(format: LogFormat, level: str) -> None:
    """Send all logs to stderr as `format` (json | console), dropping those below `level`."""
    try:
        numeric_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(_LEVELS)}") from None
    log_format = LogFormat(format)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]
    renderer = _renderer(log_format)
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=_writer_factory,
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    root = logging.getLogger()
    _remove_our_handlers(root)
    handler = _StderrHandler(level=numeric_level)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(numeric_level)


def reset_logging() -> None:
    """Undo `configure_logging` (for tests): structlog defaults, our stdlib handler removed."""
    structlog.reset_defaults()
    root = logging.getLogger()
    _remove_our_handlers(root)
    root.setLevel(logging.WARNING)


def _remove_our_handlers(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)


def get_logger(name: str, **initial_values: Any) -> FilteringBoundLogger:
    """A structlog logger whose events carry `logger=name` (plus any `initial_values`)."""
    logger: FilteringBoundLogger = structlog.get_logger(name, **initial_values)
    return logger

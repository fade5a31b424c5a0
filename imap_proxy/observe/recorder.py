"""The session recorder: chosen sessions written as redacted C:/S: transcripts.

How this works: when `recorder.enabled`, `serve()` wraps its session factory with
`Recorder.session_factory`. Each new session is sampled (`sample_rate`); a sampled one is
wrapped in a `RecordingSession`, which forwards every call to the real session and hands
what went in and what came out to a `SessionTranscript` — the net layer is otherwise
untouched, and a session that is not sampled costs nothing. A `SessionTranscript` keeps
four `StreamRedactor`s (client in, upstream out, upstream in, client out; see redact.py),
cuts what they return into CRLF lines, and writes each call as transcript entries
(wire/transcript.py): a line relayed unchanged in the same call is one `C:`/`S:` entry,
anything else is written as what came in (`c:`/`s:`) and what went out (`>s:`/`>c:`).
Every call other than reading bytes is a directive (`!: upstream-closed`, …) and the
first entry (`!: session {…}`) holds the settings a replay needs, so `imap-proxy replay`
can drive a fresh session through the same calls in the same order.

A session whose user or client family decides whether it is recorded is held in memory
(at most `PENDING_LIMIT`) until the upstream accepts its login (or it ends), then written
or dropped. Transcripts are written to `DIR/<UTC time>-<session id>.trace.part`, renamed
to `.trace` when the session ends; one stops at `max_file_bytes` (with a comment saying
so); finished ones beyond `max_total_bytes` are deleted, oldest first. A failure to write
ends that recording with a warning, never the session.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from imap_proxy import __version__
from imap_proxy.config import RecorderConfig
from imap_proxy.config_loader import ConfigError
from imap_proxy.net.connection import ConnectionClosed
from imap_proxy.observe.logging import get_logger
from imap_proxy.observe.redact import StreamRedactor
from imap_proxy.session import events as ev
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.transcript import DIRECTIVE, TraceLine, format_entry

if TYPE_CHECKING:
    from imap_proxy.net.connection import ConnectionEvent, SessionFactory, SessionLike

PENDING_LIMIT: Final = 1024 * 1024  # octets held for a session not yet chosen or dropped
MAX_PARTIAL: Final = 64 * 1024  # a longer line is written in pieces
SUFFIX: Final = ".trace"
PART_SUFFIX: Final = ".trace.part"
RULES_NOTE: Final = "# rules: "  # then the rules directory the session ran with
FORMAT_NOTE: Final = "# format: C:/S: transcript (imap_proxy/wire/transcript.py)"

_log = get_logger("imap_proxy.recorder")

# The four streams of a session, and how each is written.
CLIENT_IN, UPSTREAM_OUT = "client-in", "upstream-out"
UPSTREAM_IN, CLIENT_OUT = "upstream-in", "client-out"
_RELAYED: Final = {CLIENT_IN: "C", UPSTREAM_IN: "S"}
_CONSUMED: Final = {CLIENT_IN: "c", UPSTREAM_IN: "s"}
_SENT: Final = {UPSTREAM_OUT: ">s", CLIENT_OUT: ">c"}
_RELAY_TARGET: Final = {CLIENT_IN: UPSTREAM_OUT, UPSTREAM_IN: CLIENT_OUT}
# A response stream's tagged answers end the exchanges of the command stream of its hop.
_PARTNER: Final = {UPSTREAM_IN: UPSTREAM_OUT, CLIENT_OUT: CLIENT_IN}


class _Lines:
    """Bytes in, complete CRLF lines out (a line longer than MAX_PARTIAL in pieces)."""

    def __init__(self) -> None:
        self._partial = bytearray()

    def add(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if self._partial:
            data = bytes(self._partial) + data
            self._partial.clear()
        *lines, rest = data.split(b"\r\n")
        pieces = [line + b"\r\n" for line in lines]
        self._partial += rest
        if len(self._partial) > MAX_PARTIAL:
            pieces.extend(self.flush())
        return pieces

    def flush(self) -> list[bytes]:
        rest = bytes(self._partial)
        self._partial.clear()
        return [rest] if rest else []


def settings_directive(settings: SessionSettings) -> TraceLine:
    """`!: session {…}`: what a replay must set to behave as the recorded session did."""
    values: dict[str, Any] = {
        "listener": settings.peer.listener,
        "client_tls": settings.client_tls,
        "starttls_available": settings.starttls_available,
        "require_tls": settings.require_tls,
        "upstream_starttls": settings.upstream_starttls,
        "forward_originating": settings.forward_originating,
        "capture_literal_max": settings.capture_literal_max,
        "client_limits": dataclasses.astuple(settings.client_limits),
        "upstream_limits": dataclasses.astuple(settings.upstream_limits),
    }
    if settings.forward_originating:  # then the address is in the transcript anyway
        peer = settings.peer
        values["peer"] = [peer.address, peer.port, peer.session_id]
    if settings.sni is not None:
        values["sni"] = settings.sni
    return TraceLine(DIRECTIVE, b"session " + json.dumps(values, sort_keys=True).encode())


class SessionTranscript:
    """Calls on a session (bytes in, events out) -> redacted transcript entries."""

    def __init__(self, config: RecorderConfig, client_literal_max: int | None = None) -> None:
        self._redactors = {
            name: StreamRedactor(
                commands=name in (CLIENT_IN, UPSTREAM_OUT),
                policy=config.keep_literals,
                keep_octets=config.literal_keep_octets,
                refused_over=client_literal_max if name == CLIENT_IN else None,
            )
            for name in (CLIENT_IN, UPSTREAM_OUT, UPSTREAM_IN, CLIENT_OUT)
        }
        self._lines = {name: _Lines() for name in self._redactors}

    def received(self, stream: str, data: bytes, events: list[ev.Event]) -> list[TraceLine]:
        """`data` read from the client (CLIENT_IN) or upstream (UPSTREAM_IN), and its events."""
        inputs = self._feed(stream, data)
        outputs = self._outputs(events)
        target = _RELAY_TARGET[stream]
        if [piece for _s, piece in outputs] == inputs and all(s == target for s, _p in outputs):
            prefix = _RELAYED[stream]  # the common case: everything relayed as it came
            return [TraceLine(prefix, piece) for piece in inputs]
        entries: list[TraceLine] = []
        # Relayed pieces still to come in this call: an input none of them repeats is
        # written (as consumed) before the next output, so the entries read in order.
        relayed_later = Counter(piece for out_stream, piece in outputs if out_stream == target)
        unwritten = Counter(inputs)
        i = 0
        for out_stream, piece in outputs:
            j = -1
            if out_stream == target:
                relayed_later[piece] -= 1
                if unwritten[piece] > 0:
                    j = inputs.index(piece, i)
            if j < 0:
                while i < len(inputs) and relayed_later[inputs[i]] <= 0:
                    unwritten[inputs[i]] -= 1
                    entries.append(TraceLine(_CONSUMED[stream], inputs[i]))
                    i += 1
                entries.append(TraceLine(_SENT[out_stream], piece))
                continue
            for p in inputs[i:j]:
                unwritten[p] -= 1
                entries.append(TraceLine(_CONSUMED[stream], p))
            unwritten[piece] -= 1
            entries.append(TraceLine(_RELAYED[stream], piece))
            i = j + 1
        entries.extend(TraceLine(_CONSUMED[stream], p) for p in inputs[i:])
        return entries

    def directive(self, name: str, events: list[ev.Event]) -> list[TraceLine]:
        """A call without bytes (`client-closed`, `client-tls`, …) and its events."""
        entries = self._flush_inputs()
        if name == "client-tls":
            self._redactors[CLIENT_IN].discard_buffered()
        elif name == "upstream-tls":
            self._redactors[UPSTREAM_IN].discard_buffered()
        entries.append(TraceLine(DIRECTIVE, name.encode()))
        entries.extend(TraceLine(_SENT[s], piece) for s, piece in self._outputs(events))
        return entries

    def finish(self) -> list[TraceLine]:
        """What is left in the line buffers, as fragments."""
        entries = self._flush_inputs()
        for stream in (UPSTREAM_OUT, CLIENT_OUT):
            entries.extend(TraceLine(_SENT[stream], p) for p in self._lines[stream].flush())
        return entries

    def broken(self) -> str | None:
        """Why a stream could not be framed (then the transcript is incomplete), if so."""
        return next((r.broken for r in self._redactors.values() if r.broken), None)

    def _flush_inputs(self) -> list[TraceLine]:
        return [
            TraceLine(_CONSUMED[stream], piece)
            for stream in (CLIENT_IN, UPSTREAM_IN)
            for piece in self._lines[stream].flush()
        ]

    def _feed(self, stream: str, data: bytes) -> list[bytes]:
        redactor = self._redactors[stream]
        pieces = self._lines[stream].add(redactor.feed(data))
        partner = _PARTNER.get(stream)
        if partner is not None:
            for tag in redactor.tagged:
                self._redactors[partner].end_exchange(tag)
            redactor.tagged.clear()
        return pieces

    def _outputs(self, events: list[ev.Event]) -> list[tuple[str, bytes]]:
        outputs: list[tuple[str, bytes]] = []
        for event in events:
            if isinstance(event, ev.SendToClient):
                outputs.extend((CLIENT_OUT, p) for p in self._feed(CLIENT_OUT, event.data))
            elif isinstance(event, ev.SendToUpstream):
                outputs.extend((UPSTREAM_OUT, p) for p in self._feed(UPSTREAM_OUT, event.data))
        return outputs


class _Recording:
    """One session's transcript on its way to a file: chosen, pending, or dropped."""

    def __init__(self, recorder: Recorder, settings: SessionSettings) -> None:
        self.recorder = recorder
        self.config = recorder.config
        self.transcript = SessionTranscript(
            recorder.config, settings.client_limits.max_literal_size
        )
        self.session_id = settings.peer.session_id or f"{os.getpid()}-{id(self):x}"
        self.started = time.gmtime()
        self.family: str | None = None
        self.chosen: bool | None = None if recorder.has_filters else True
        self.pending: list[str] = []
        self.pending_size = 0
        self.file: IO[str] | None = None
        self.path: Path | None = None
        self.written = 0
        self.stopped = False
        policy = self.config.keep_literals.value
        self.write(
            [
                f"# imap-proxy {__version__} session recording; credentials redacted",
                FORMAT_NOTE,
                f"# session {self.session_id}, started "
                + time.strftime("%Y-%m-%dT%H:%M:%SZ", self.started),
                f"# literals over {self.config.literal_keep_octets} octets: {policy}",
                f"{RULES_NOTE}{settings.rules.origin or 'none'}",
                format_entry(DIRECTIVE, settings_directive(settings).data),
            ]
        )

    def record(self, entries: list[TraceLine], events: list[ev.Event]) -> None:
        self.write([format_entry(e.prefix, e.data) for e in entries])
        for event in events:
            if isinstance(event, ev.ClientIdentified):
                self.family = event.family
            elif isinstance(event, ev.Authenticated) and self.chosen is None:
                self.decide(event.user)

    def decide(self, user: str | None) -> None:
        users = {u.casefold() for u in self.config.users}
        families = {f.casefold() for f in self.config.families}
        chosen = (not users or (user is not None and user.casefold() in users)) and (
            not families or (self.family or "").casefold() in families
        )
        self.chosen = chosen
        lines, self.pending = self.pending, []
        if chosen:
            self.write(lines)
        else:
            self.stop(None)  # from here on the session runs unrecorded: no more work

    def write(self, lines: list[str]) -> None:
        if self.stopped or not lines:
            return
        if self.chosen is None:
            self.pending.extend(lines)
            self.pending_size += sum(len(line) + 1 for line in lines)
            if self.pending_size > PENDING_LIMIT:
                self.stop(None)  # never chosen in time: dropped
            return
        if not self.chosen:
            return
        text = "".join(line + "\n" for line in lines)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        try:
            if self.file is None:
                self.path, self.file = self.recorder.open_file(self.session_id, self.started)
            if self.written + size > self.config.max_file_bytes:
                note = f"# recording stopped: max_file_bytes ({self.config.max_file_bytes})\n"
                self.file.write(note)
                self.written += len(note)
                self.stop("max_file_bytes")
                return
            self.file.write(text)
            self.written += size
        except OSError as error:
            _log.warning("session recording failed", session=self.session_id, error=str(error))
            self.stop("write failed")

    def finish(self, outcome: str) -> None:
        self.recorder.forget(self.session_id)
        if self.chosen is None:
            self.decide(None)  # never logged in: only a family filter can choose it
        self.write([format_entry(e.prefix, e.data) for e in self.transcript.finish()])
        broken = self.transcript.broken()
        if broken is not None:
            self.write([f"# could not frame part of the session: {broken[:200]}"])
        family = f", client family {self.family}" if self.family else ""
        self.write([f"# ended: {outcome}{family}"])
        self.stop(None)

    def stop(self, reason: str | None) -> None:
        """No more recording; `reason` when it ends early (logged at debug level)."""
        if self.stopped:
            return
        self.stopped = True
        if reason is not None:
            _log.debug("session recording stopped", session=self.session_id, reason=reason)
        self.pending = []
        if self.file is not None and self.path is not None:
            try:
                self.file.close()
            except OSError:
                return
            self.recorder.finished(self.path)
            self.file = None


class RecordingSession:
    """A session that records every call made on it; implements `SessionLike`."""

    def __init__(self, inner: SessionLike, recording: _Recording) -> None:
        self._inner = inner
        self._recording = recording

    @property
    def client_paused(self) -> bool:
        return self._inner.client_paused

    @property
    def upstream_paused(self) -> bool:
        return self._inner.upstream_paused

    @property
    def idle_deadline_kind(self) -> str | None:
        return self._inner.idle_deadline_kind

    @property
    def inner(self) -> SessionLike:
        return self._inner

    def receive_from_client(self, data: bytes) -> list[ev.Event]:
        return self._received(CLIENT_IN, data, self._inner.receive_from_client(data))

    def receive_from_upstream(self, data: bytes) -> list[ev.Event]:
        return self._received(UPSTREAM_IN, data, self._inner.receive_from_upstream(data))

    def client_tls_established(self) -> list[ev.Event]:
        return self._directive("client-tls", self._inner.client_tls_established())

    def upstream_tls_established(self) -> list[ev.Event]:
        return self._directive("upstream-tls", self._inner.upstream_tls_established())

    def client_closed(self) -> list[ev.Event]:
        return self._directive("client-closed", self._inner.client_closed())

    def upstream_closed(self) -> list[ev.Event]:
        return self._directive("upstream-closed", self._inner.upstream_closed())

    def shutdown(self) -> list[ev.Event]:
        return self._directive("shutdown", self._inner.shutdown())

    def timed_out(self) -> list[ev.Event]:
        return self._directive("timed-out", self._inner.timed_out())

    def finish(self, outcome: str) -> None:
        """The connection is over: write what is left and close the file."""
        self.finish_recording(self._recording, outcome)

    @staticmethod
    def finish_recording(recording: _Recording, outcome: str) -> None:
        try:
            recording.finish(outcome)
        except Exception:  # the recorder must never take a connection down
            _log.exception("session recorder failed", session=recording.session_id)
            recording.stop("recorder failed")

    def _received(self, stream: str, data: bytes, events: list[ev.Event]) -> list[ev.Event]:
        recording = self._recording
        if not recording.stopped:
            transcript = recording.transcript
            self._guarded(
                lambda: recording.record(transcript.received(stream, data, events), events)
            )
        return events

    def _directive(self, name: str, events: list[ev.Event]) -> list[ev.Event]:
        recording = self._recording
        if not recording.stopped:
            transcript = recording.transcript
            self._guarded(lambda: recording.record(transcript.directive(name, events), events))
        return events

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:  # the recorder must never take a session down
            _log.exception("session recorder failed", session=self._recording.session_id)
            self._recording.stop("recorder failed")


class Recorder:
    """Chooses the sessions to record and owns the directory; one per server."""

    def __init__(self, config: RecorderConfig, *, rng: Callable[[], float] = random.random) -> None:
        if config.directory is None:
            raise ValueError("the recorder needs a directory")
        self.config = config
        self.directory = config.directory
        self._rng = rng
        self.has_filters = bool(config.users or config.families)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            finished = [(p.stat().st_mtime, p) for p in self.directory.glob("*" + SUFFIX)]
            sizes = [(p, p.stat().st_size) for _mtime, p in sorted(finished)]
        except OSError as error:
            raise ConfigError(
                [f"recorder.directory: {self.directory}: {error.strerror or error}"]
            ) from None
        self._active: dict[str, _Recording] = {}  # by session (connection) id
        self._finished: deque[tuple[Path, int]] = deque(sizes)
        self._total = sum(size for _path, size in self._finished)
        _log.info(
            "recording sessions",
            directory=str(self.directory),
            sample_rate=config.sample_rate,
            users=len(config.users),
            families=config.families,
            keep_literals=config.keep_literals.value,
        )

    def session_factory(self, inner: SessionFactory) -> SessionFactory:
        def factory(settings: SessionSettings) -> SessionLike:
            session = inner(settings)
            if self.config.sample_rate < 1 and self._rng() >= self.config.sample_rate:
                return session
            return self.wrap(session, settings)

        return factory

    def wrap(self, session: SessionLike, settings: SessionSettings) -> RecordingSession:
        recording = _Recording(self, settings)
        self._active[recording.session_id] = recording
        return RecordingSession(session, recording)

    def observe(self, event: ConnectionEvent) -> None:
        """A connection observer: a closed connection's recording is finished."""
        if isinstance(event, ConnectionClosed):
            recording = self._active.get(event.connection_id)
            if recording is not None:
                RecordingSession.finish_recording(recording, event.outcome)

    def forget(self, session_id: str) -> None:
        self._active.pop(session_id, None)

    def open_file(self, session_id: str, started: time.struct_time) -> tuple[Path, IO[str]]:
        safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in session_id)
        name = time.strftime("%Y%m%dT%H%M%SZ", started) + f"-{safe_id}{PART_SUFFIX}"
        path = self.directory / name
        # Transcripts hold mail: readable by the proxy's user only.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return path, open(descriptor, "w", encoding="utf-8", newline="\n")

    def finished(self, part: Path) -> None:
        """A transcript is complete: rename it and delete the oldest beyond the cap."""
        path = part.with_name(part.name.removesuffix(PART_SUFFIX) + SUFFIX)
        try:
            part.rename(path)
            size = path.stat().st_size
        except OSError as error:
            _log.warning("session recording not finished", path=str(part), error=str(error))
            return
        self._finished.append((path, size))
        self._total += size
        while self._total > self.config.max_total_bytes and len(self._finished) > 1:
            oldest, oldest_size = self._finished.popleft()
            self._total -= oldest_size
            try:
                oldest.unlink()
            except FileNotFoundError:
                continue
            except OSError as error:
                _log.warning("old recording not deleted", path=str(oldest), error=str(error))

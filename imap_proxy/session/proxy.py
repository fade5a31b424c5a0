"""ProxySession: one client connection and its upstream connection, sans-IO.

How this works: the I/O layer feeds bytes in and carries out the events that come back:

    session = ProxySession(settings)
    events = session.receive_from_upstream(data)     # bytes read from the upstream
    events = session.receive_from_client(data)       # bytes read from the client
    events = session.client_tls_established()        # after a StartClientTLS handshake
    events = session.upstream_tls_established()      # after a StartUpstreamTLS handshake
    events = session.client_closed() / upstream_closed()
    events = session.shutdown()                      # drain: BYE as soon as nothing is in flight
    events = session.timed_out()                     # the greeting, pre-auth or idle timer fired
    session.client_paused / session.upstream_paused  # do not read that side while True

Each direction has a framer. Client messages are forwarded as their original bytes, line
by line and literal chunk by literal chunk, as they arrive (STREAM); a few commands the
proxy must rewrite or answer are held until complete (HOLD), and refused ones are dropped
(DISCARD). A command whose first argument a rule rewrites while the rest streams (APPEND:
the message) is held only up to that argument (HEAD). When a rule needs the mailbox list
first, the proxy sends its own `LIST "" "*"` and the command waits for it (learning).
Upstream responses stream the same way; only lines carrying capabilities are
rewritten. A run of one-line FETCH responses (a mailbox sync's flags, by the thousand)
is taken from the framer and relayed as one piece when nothing needs it line by line:
no message is open, no command of the proxy's own runs, and the rules let it pass
(`RuleHooks.pass_run`: the observing rules see every line of it at once). Output the
proxy makes itself is never put in the middle of a message being relayed: it waits for
the message's end.

Before the client is greeted the session talks to the upstream alone: optional STARTTLS,
then a CAPABILITY probe when the greeting did not list capabilities, so the capability
contract (`capabilities.py`) can be applied to the very first line the client reads.

A command waiting for the upstream's `+` (a synchronizing literal, AUTHENTICATE, IDLE)
pauses reading from the client until the `+` (or the tagged answer) arrives; this is what
lets a client's LITERAL+ literal be converted to a synchronizing one for an upstream
without LITERAL+, and a refused literal be dropped rather than taken for commands.

A rule may answer a held command by emulating it (`Emulate`: MOVE for an upstream without
MOVE). The session waits until the client's earlier commands have completed (so every
untagged line that follows belongs to the emulation or to nobody), stops reading client
commands, and runs the rule's script: each `UpstreamCommand` it yields goes upstream
under a proxy tag, and its tagged line and one-line untagged responses go back into the
script. The script's answer is what the client sees; then reading resumes. If the
upstream is lost mid-script the client gets `* BYE` and the session ends.

An idling client may be bridged (`_IdleBridge`, rules `reidle` / `idle_poll`): the session
says when it next wants `tick(now)` (`next_tick(now)`, on the I/O layer's clock; a wait
starts at the first call after it began), and on the tick it renews the upstream's IDLE
(DONE, swallow the tagged OK, `<proxy-tag> IDLE`, swallow the `+`; the new IDLE's answer
maps back to the client's tag) or, for an upstream without IDLE, sends a NOOP whose
untagged data goes to the client. While a renewal or a NOOP is out, client reading
pauses, so a DONE that comes meanwhile is read after it, ending the IDLE that runs then.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from imap_proxy.quirks.actions import (
    Action,
    Emulate,
    EmulationAnswer,
    LocalAnswer,
    ReplaceCommand,
    StepResult,
)
from imap_proxy.session import events as ev
from imap_proxy.session.auth import login_user, sasl_user
from imap_proxy.session.capabilities import (
    ClientTransport,
    capabilities_in_line,
    client_capabilities,
    has_capability,
    rewrite_capability_line,
)
from imap_proxy.session.idcommand import rewrite_id_command
from imap_proxy.session.rulehooks import HOLDABLE, RuleHooks, untagged_kind
from imap_proxy.session.settings import SessionSettings
from imap_proxy.session.state import AUTH_COMMANDS, ProtocolState, next_state
from imap_proxy.session.tracker import CommandTracker, InFlight
from imap_proxy.wire.command import Command, parse_command, parse_id_params, peek_command
from imap_proxy.wire.encode import encode_command
from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.framer import (
    NEED_DATA,
    FrameEvent,
    Framer,
    LinePart,
    LiteralData,
    LiteralHeader,
)
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import parse_sequence_set


class _Phase(enum.Enum):
    GREETING = "greeting"  # waiting for the upstream's greeting
    UPSTREAM_STARTTLS = "upstream-starttls"  # our STARTTLS is in flight
    UPSTREAM_TLS = "upstream-tls"  # the I/O layer is shaking hands upstream
    PROBING = "probing"  # our CAPABILITY is in flight
    RELAYING = "relaying"
    CLIENT_TLS = "client-tls"  # the I/O layer is shaking hands with the client
    CLOSED = "closed"


class _Await(enum.Enum):
    """What the upstream's next continuation request (`+`) is for."""

    NOTHING = "nothing"
    CLIENT_LITERAL = "client-literal"  # relay it; the client then sends its literal
    CONVERTED_LITERAL = "converted-literal"  # swallow it; the client's LITERAL+ data follows
    PROXY_LITERAL = "proxy-literal"  # swallow it; send the next part of our own message
    SASL = "sasl"  # relay it; the client answers with one line
    IDLE = "idle"  # relay it; the client ends IDLE with DONE
    REIDLE = "reidle"  # swallow it; the proxy's own IDLE goes on with the client's


class _Mode(enum.Enum):
    STREAM = "stream"
    HOLD = "hold"
    HEAD = "head"  # held up to the first argument, then STREAM
    DISCARD = "discard"


class _Role(enum.Enum):
    """What the next line from the client, outside any message, is."""

    COMMAND = "command"
    SASL_RESPONSE = "sasl-response"
    IDLE_DONE = "idle-done"


@dataclass(slots=True)
class _ClientMessage:
    tag: bytes
    name: str
    mode: _Mode
    capture: bool = False
    lines: list[bytes] = field(default_factory=list)
    literals: list[bytes | None] = field(default_factory=list)
    literal: bytearray | None = None
    upstream_tag: bytes | None = None  # set when a rule sends it upstream under another tag

    def message(self) -> Message:
        return Message(tuple(self.lines), tuple(self.literals))


@dataclass(slots=True)
class _HeldResponse:
    lines: list[bytes]
    literals: list[bytes] = field(default_factory=list)
    literal: bytearray = field(default_factory=bytearray)  # the literal being received

    def message(self) -> Message:
        return Message(tuple(self.lines), tuple(self.literals))

    def so_far(self) -> bytes:
        out = bytearray()
        for index, line in enumerate(self.lines):
            out += line
            out += self.literals[index] if index < len(self.literals) else self.literal
        return bytes(out)


@dataclass(slots=True)
class _Emulation:
    """A held client command being answered by a rule's script of upstream commands."""

    tag: bytes
    name: str
    emulate: Emulate
    started: bool = False


class _BridgeStep(enum.Enum):
    IDLING = "idling"  # the upstream's IDLE runs (polling: nothing is out)
    ENDING = "ending"  # our DONE is out; the ended IDLE's tagged OK is awaited
    STARTING = "starting"  # our own IDLE is out; its `+` is awaited
    POLLING = "polling"  # our NOOP is out
    WAITING = "waiting"  # polling: the client's earlier commands run; `+` when they end


@dataclass(slots=True)
class _IdleBridge:
    """A client IDLE the proxy keeps going: by renewing the upstream's, or by polling."""

    tag: bytes  # the client's IDLE tag
    action: Action
    interval: float  # seconds from the start of a wait to the tick
    polling: bool
    step: _BridgeStep = _BridgeStep.IDLING
    since: float | None = None  # when the current wait began, on the I/O layer's clock


_Completion = Callable[[bytes, list[bytes]], None]
_BEFORE_GREETING = frozenset(
    {_Phase.GREETING, _Phase.UPSTREAM_STARTTLS, _Phase.UPSTREAM_TLS, _Phase.PROBING}
)
_CLAIMABLE = frozenset({"ID", "LIST"})  # untagged kinds an injected command may claim
_LISTS = frozenset({"LIST", "LSUB", "XLIST"})
_MAILBOX_SWITCHES = frozenset({"SELECT", "EXAMINE", "CLOSE", "UNSELECT"})
# A run of one-line FETCH responses: whole CRLF lines, no literal (no `{` at all).
_FETCH_RUN = re.compile(rb"(?:\* [0-9]{1,10} FETCH [^\r\n{]*\r\n)+")
_BAD_STARTTLS_NOT_OFFERED = b"BAD STARTTLS is not available on this connection"
_PRIVACY_REQUIRED = b"NO [PRIVACYREQUIRED] Log in only over TLS: use STARTTLS or the TLS port"


class ProxySession:
    # Slots: a session lives as long as its connection, by the ten thousand (IDLE).
    __slots__ = (
        "_await",
        "_await_tag",
        "_bridge",
        "_client",
        "_client_open",
        "_client_tls",
        "_deferred_client",
        "_deferred_upstream",
        "_draining",
        "_emulation",
        "_greeting",
        "_learning",
        "_line_by_line",
        "_msg",
        "_out",
        "_phase",
        "_proxy_parts",
        "_relaying_response",
        "_role",
        "_sasl_mechanism",
        "_stray_done",
        "_tags_back",
        "_tracker",
        "_up_continues",
        "_up_held",
        "_upstream",
        "_upstream_bye",
        "_upstream_open",
        "hooks",
        "settings",
        "state",
        "user",
    )

    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self.state = ProtocolState.NOT_AUTHENTICATED
        self.hooks = RuleHooks(settings)
        self.user: str | None = None
        self._client = Framer(Side.CLIENT, settings.client_limits)
        self._upstream = Framer(Side.UPSTREAM, settings.upstream_limits)
        self._tracker = CommandTracker()
        self.hooks.view.client_commands = self._tracker.client_tags
        self._learning = False  # our LIST for the rules is in flight; the client waits
        self._phase = _Phase.GREETING
        self._client_tls = settings.client_tls
        self._greeting: bytes = b""
        self._out: list[ev.Event] = []
        # client -> upstream
        self._msg: _ClientMessage | None = None
        self._role = _Role.COMMAND
        self._await = _Await.NOTHING
        self._await_tag: bytes | None = None
        self._upstream_open = False  # a client message is partly sent upstream
        self._deferred_upstream: list[bytes] = []
        self._proxy_parts: list[bytes] = []  # the rest of our own message, after a `+`
        self._sasl_mechanism = ""
        # upstream -> client
        self._client_open = False  # an upstream message is partly relayed to the client
        self._up_continues = False  # the current upstream message goes on after a literal
        self._line_by_line = 0  # octets of a refused FETCH run still to frame line by line
        self._relaying_response = True  # the current upstream message goes to the client
        self._deferred_client: list[bytes] = []
        self._draining = False
        self._upstream_bye = False
        self._up_held: _HeldResponse | None = None  # an untagged response a rule wants whole
        self._emulation: _Emulation | None = None  # client reading pauses while it runs
        self._tags_back: dict[bytes, list[bytes]] = {}  # upstream tag -> client tags (FIFO)
        self._bridge: _IdleBridge | None = None  # the client's IDLE, kept going by a rule
        self._stray_done = False  # an IDLE the client did not end was answered: drop its DONE

    # ----------------------------------------------------------------- properties

    @property
    def upstream_capabilities(self) -> list[str]:
        return self.hooks.view.upstream_capabilities

    @upstream_capabilities.setter
    def upstream_capabilities(self, caps: list[str]) -> None:
        self.hooks.upstream_changed(caps)

    @property
    def client_paused(self) -> bool:
        return (
            self._phase is not _Phase.RELAYING
            or self._await is not _Await.NOTHING
            or self._emulation is not None
            or self._learning
            or (self._draining and self._msg is None)
            or (self._bridge is not None and self._bridge.step is not _BridgeStep.IDLING)
        )

    @property
    def upstream_paused(self) -> bool:
        return self._phase in (_Phase.UPSTREAM_TLS, _Phase.CLIENT_TLS, _Phase.CLOSED)

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def idle_deadline_kind(self) -> str | None:
        if self._phase is _Phase.CLOSED:
            return None
        if self._phase in _BEFORE_GREETING:
            return "greeting"  # the upstream has not made the session ready yet
        if self.state is ProtocolState.NOT_AUTHENTICATED:
            return "preauth"
        return "idling" if self._role is _Role.IDLE_DONE else "idle"

    @property
    def keepalive_interval(self) -> float | None:
        """Seconds of silence towards a client in IDLE after which a rule wants
        `keepalive()` called; None when no keepalive is due (not idling, no such rule)."""
        if self._phase is not _Phase.RELAYING or self._role is not _Role.IDLE_DONE:
            return None
        action = self.hooks.rules.keepalive()
        return None if action is None else action.keepalive_interval

    def keepalive(self) -> list[ev.Event]:
        """The keepalive timer fired: `* OK Still here` to a client still in IDLE."""
        action = self.hooks.rules.keepalive()
        if action is not None and self.keepalive_interval is not None:
            self._to_client(action.keepalive_line)
            self._out += self.hooks.record([(action.rule_id, action.kind)])
        return self._take()

    def next_tick(self, now: float) -> float | None:
        """When (on the caller's clock) the session wants `tick()`: a bridged IDLE's
        renewal or poll; None when nothing is timed. A wait begins at the first call after
        it started, so the I/O layer asks after every batch it handles."""
        bridge = self._bridge
        if (
            bridge is None
            or bridge.step is not _BridgeStep.IDLING
            or self._phase is not _Phase.RELAYING
            or self._role is not _Role.IDLE_DONE
        ):
            return None
        if bridge.since is None:
            bridge.since = now
        return bridge.since + bridge.interval

    def tick(self, now: float) -> list[ev.Event]:
        """The timer fired: renew the upstream's IDLE, or poll with NOOP, if it is time."""
        due = self.next_tick(now)
        bridge = self._bridge
        if due is not None and bridge is not None and now >= due:
            if not bridge.polling:
                bridge.step = _BridgeStep.ENDING
                self._to_upstream(b"DONE\r\n")
                self._out += self.hooks.record([(bridge.action.rule_id, bridge.action.kind)])
            elif len(self._tracker) == 0:
                bridge.step = _BridgeStep.POLLING
                self._inject(b"NOOP", "NOOP", self._polled)
            else:
                bridge.since = now  # the client's earlier commands still run: later
        return self._take()

    @property
    def client_tls(self) -> bool:
        return self._client_tls

    def client_capabilities(self) -> list[str]:
        transport = ClientTransport(
            tls_active=self._client_tls,
            # RFC 3501 §6.2.1: STARTTLS is for the not-authenticated state only.
            starttls_available=self.settings.starttls_available
            and self.state is ProtocolState.NOT_AUTHENTICATED,
            require_tls=self.settings.require_tls,
        )
        caps, applied = self.hooks.capabilities(
            client_capabilities(self.upstream_capabilities, transport)
        )
        self._out += applied
        return caps

    def _capabilities_for_untagged(self) -> list[str]:
        """Capabilities an untagged CAPABILITY shows; one the upstream sends while a login
        is in flight lists what holds after it (Dovecot sends it just before the OK)."""
        view = self.hooks.view
        if view.authenticated or not AUTH_COMMANDS & set(self._tracker.client_names()):
            return self.client_capabilities()
        view.authenticated = True
        try:
            return self.client_capabilities()
        finally:
            view.authenticated = False

    # ------------------------------------------------------------------ inputs

    def receive_from_client(self, data: bytes) -> list[ev.Event]:
        if self._phase is _Phase.CLIENT_TLS:
            # Plaintext after STARTTLS, before the handshake: never a command.
            if data:
                self._out.append(ev.PlaintextDiscarded(len(data)))
        elif self._phase is not _Phase.CLOSED:
            self._client.feed(data)
            self._pump()
        return self._take()

    def receive_from_upstream(self, data: bytes) -> list[ev.Event]:
        if self._phase is not _Phase.CLOSED:
            self._upstream.feed(data)
            self._pump()
        return self._take()

    def client_tls_established(self) -> list[ev.Event]:
        if self._phase is _Phase.CLIENT_TLS:
            self._client_tls = True
            self._phase = _Phase.RELAYING
            self._pump()
        return self._take()

    def upstream_tls_established(self) -> list[ev.Event]:
        if self._phase is _Phase.UPSTREAM_TLS:
            # RFC 3501 §6.2.1: capabilities learnt before TLS are void.
            self._probe_capabilities()
            self._pump()
        return self._take()

    def client_closed(self) -> list[ev.Event]:
        self._close("client-closed")
        return self._take()

    def upstream_closed(self) -> list[ev.Event]:
        if self._phase is not _Phase.CLOSED:
            if self._upstream_bye or self.state is ProtocolState.LOGOUT:
                self._close("logout")
            elif self._emulation is not None and self._emulation.started:
                name = self._emulation.name.encode("ascii")
                self._bye(
                    b"[UNAVAILABLE] Upstream server closed the connection during " + name,
                    "upstream-lost",
                )
            else:
                self._bye(b"[UNAVAILABLE] Upstream server closed the connection", "upstream-lost")
        return self._take()

    def shutdown(self) -> list[ev.Event]:
        self._draining = True
        if self._phase is not _Phase.RELAYING or self._role is _Role.IDLE_DONE:
            self._bye(b"[UNAVAILABLE] Server shutting down", "shutdown")
        else:
            self._drain_if_quiet()
        return self._take()

    def timed_out(self) -> list[ev.Event]:
        if self._phase in _BEFORE_GREETING:
            self._out.append(ev.ProtocolViolation(Side.UPSTREAM, "no greeting in time"))
            self._bye(b"[UNAVAILABLE] Upstream server did not greet in time", "upstream-greeting")
        else:
            self._bye(b"Autologout; idle for too long", "timeout")
        return self._take()

    # ---------------------------------------------------------------- plumbing

    def _take(self) -> list[ev.Event]:
        out, self._out = self._out, []
        return out

    def _pump(self) -> None:
        """Frame and handle whatever both sides have sent, as far as the state allows."""
        upstream, client = self._upstream, self._client
        progress = True
        while progress and self._phase is not _Phase.CLOSED:
            progress = False
            if upstream.has_input and not self.upstream_paused:
                progress = self._pump_side(upstream, self._upstream_event)
            if client.has_input and not self.client_paused and not self.closed:
                progress |= self._pump_side(client, self._client_event)

    def _pump_side(self, framer: Framer, handle: Callable[[FrameEvent], None]) -> bool:
        handled = False
        paused = self.upstream_paused if framer is self._upstream else self.client_paused
        while not paused and self._phase is not _Phase.CLOSED and framer.has_input:
            if framer is self._upstream and self._relay_fetch_run():
                handled = True
                continue
            try:
                event = framer.next_event()
            except ProtocolError as error:
                self._violation(error)
                return True
            if event is NEED_DATA:
                break
            handle(event)
            handled = True
            paused = self.upstream_paused if framer is self._upstream else self.client_paused
        return handled

    def _violation(self, error: ProtocolError) -> None:
        limit = getattr(error, "limit", None)
        self._out.append(ev.ProtocolViolation(error.side, error.text, limit))
        if error.side is Side.CLIENT:
            self._bye(error.text.encode("ascii", "replace"), "client-protocol-error")
        else:
            self._bye(b"[UNAVAILABLE] Upstream server protocol error", "upstream-protocol-error")

    def _bye(self, text: bytes, reason: str) -> None:
        if self._phase is _Phase.CLOSED:
            return
        if not self._client_open:
            self._out.append(ev.SendToClient(b"* BYE " + text + b"\r\n"))
        # Mid-message the BYE cannot be framed: the client sees the connection end.
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self._phase is not _Phase.CLOSED:
            emulation, self._emulation = self._emulation, None
            if emulation is not None and emulation.started:
                rule_id, kind = emulation.emulate.rule_id, emulation.emulate.kind
                self._out.append(ev.EmulationFinished(rule_id, kind, "failed"))
            self._phase = _Phase.CLOSED
            self._out.append(ev.Close(reason))

    def _to_client(self, data: bytes) -> None:
        """Output the proxy makes itself: never inside a relayed message."""
        if self._client_open:
            self._deferred_client.append(data)
        else:
            self._out.append(ev.SendToClient(data))

    def _to_upstream(self, data: bytes) -> None:
        if self._upstream_open:
            self._deferred_upstream.append(data)
        else:
            self._out.append(ev.SendToUpstream(data))

    # ------------------------------------------------------- upstream → client

    def _upstream_event(self, event: FrameEvent) -> None:
        if self._line_by_line and isinstance(event, LinePart):
            self._line_by_line = max(0, self._line_by_line - len(event.raw))
        if self._up_held is not None:
            self._held_response_event(event)
            return
        if isinstance(event, LiteralData):
            if self._relaying_response:
                self._out.append(ev.SendToClient(event.data))
            return
        assert isinstance(event, LinePart)
        if self._up_continues:
            self._upstream_continuation_line(event)
            return
        self._up_continues = event.literal is not None
        self._relaying_response = True
        if self._phase is _Phase.RELAYING:
            self._relay_response(event)
        else:
            self._pre_greeting_response(event)

    def _relay_fetch_run(self) -> bool:
        """Relay a run of one-line FETCH responses as one piece (the bulk of a mailbox
        sync: `* 1 FETCH (FLAGS …)` by the thousand) when nothing needs to see them one by
        one: no message under way or held, no command of the proxy's own in flight (its
        untagged data is its own), no IDLE bridge, and the rules let the run pass."""
        if (
            self._line_by_line
            or self._phase is not _Phase.RELAYING
            or self._up_held is not None
            or self._up_continues
            or self._bridge is not None
            or self._tracker.has_injected
        ):
            return False
        run = self._upstream.peek_run(_FETCH_RUN)
        if not run:
            return False
        hooks = self.hooks
        if hooks.rules.watches_untagged and not hooks.pass_run(
            "FETCH", run, self._tracker.client_names
        ):
            # Refused: these lines go one by one, and the rest of the run is not looked at
            # again after each of them (that would copy and search it once a line).
            self._line_by_line = len(run)
            return False
        self._upstream.skip(len(run))
        self._relaying_response = True
        self._out.append(ev.SendToClient(run))
        self._end_client_message()
        return True

    def _upstream_continuation_line(self, part: LinePart) -> None:
        """A line that follows a literal inside one upstream message."""
        if self._relaying_response:
            self._out.append(ev.SendToClient(part.raw))
        if part.literal is None:
            self._up_continues = False
            self._end_client_message()

    def _end_client_message(self) -> None:
        self._client_open = False
        self._relaying_response = True
        if self._deferred_client:
            self._out.append(ev.SendToClient(b"".join(self._deferred_client)))
            self._deferred_client.clear()

    def _relay_response(self, part: LinePart) -> None:
        line = part.raw
        if line.startswith(b"+"):
            self._continuation(line)
            return
        if line.startswith(b"* "):
            self._untagged(part)
            return
        tag, _, rest = line.partition(b" ")
        # Runs of spaces as one, as the parser reads them (`a  OK` is still an OK).
        status = rest.lstrip(b" ").split(b" ", 1)[0].rstrip(b"\r\n").upper()
        status_text = status.decode("ascii", "replace")
        if self._tags_back:
            tag, part = self._client_tag_of(tag, part)
        command = self._tracker.get(tag)
        if command is None:
            self._relay_line(part)  # not ours to understand: pass it on unchanged
            return
        bridged = self._bridge is not None and command.tag == self._bridge.tag
        if bridged and self._bridged_idle_ended(status_text):
            return  # the end of an upstream IDLE the proxy renews
        self._tagged(command, part, status_text)

    def _client_tag_of(self, tag: bytes, part: LinePart) -> tuple[bytes, LinePart]:
        """A tagged response under a tag a rule gave the command upstream: the client's."""
        waiting = self._tags_back.get(tag)
        if not waiting:
            return tag, part
        client_tag = waiting.pop(0)
        if not waiting:
            del self._tags_back[tag]
        return client_tag, LinePart(client_tag + part.raw[len(tag) :], part.literal)

    def _retag(self, msg: _ClientMessage, line: bytes) -> bytes:
        """The first line of a client command, under the tag a rule chose for upstream."""
        upstream_tag, msg.upstream_tag = msg.upstream_tag, None
        if upstream_tag is None or not line.startswith(msg.tag + b" "):
            return line
        self._tags_back.setdefault(upstream_tag, []).append(msg.tag)
        return upstream_tag + line[len(msg.tag) :]

    def _relay_line(self, part: LinePart, line: bytes | None = None) -> None:
        data = part.raw if line is None else line
        if data:  # b"": a rule dropped the response
            self._out.append(ev.SendToClient(data))
        if part.literal is not None:
            self._client_open = True
        else:
            self._end_client_message()

    def _untagged(self, part: LinePart) -> None:
        line = part.raw
        polling = self._bridge is not None and self._bridge.step is _BridgeStep.POLLING
        if (
            self._tracker.has_injected
            and not polling
            and (self._tracker.client_commands() == 0 or self._injected_claims(line))
        ):
            injected = self._tracker.injected()
            # Only our own commands are in flight: their untagged data is theirs.
            if part.literal is None:
                injected[0].untagged.append(line)
                return
            if self._emulation is None:
                self._relaying_response = False
                return
            # A multi-part response during an emulation is nobody's: the client gets it.
        if line[2:6].upper() == b"BYE ":
            self._upstream_bye = True
        if self.hooks.rules.watches_untagged:
            kind = untagged_kind(line)
            held = (
                self.hooks.hold(kind, line, self._tracker.client_names())
                if kind in HOLDABLE
                else None
            )
            if held is not None:
                self._out += held
                return
            released = self.hooks.release_before_untagged(kind)
            if released:
                self._out.append(ev.SendToClient(released))
            if self.hooks.observes(kind) and self.hooks.observe_untagged(
                kind, line, part.literal is None, self._tracker.client_names
            ):
                return  # a rule keeps this one-line response for the tagged completion
            if self.hooks.wants_response(kind, line):
                if part.literal is not None:
                    self._hold_response(part)
                    return
                line, applied = self.hooks.rewrite_response(line)
                self._out += applied
        if part.literal is None:
            caps = capabilities_in_line(line)
            if caps is not None:
                if AUTH_COMMANDS & set(self._tracker.client_names()):
                    # Sent just before a login's OK: the post-login capabilities.
                    self.hooks.view.authenticated = True
                self.upstream_capabilities = caps
                line = rewrite_capability_line(line, self._capabilities_for_untagged())
        self._relay_line(part, line)

    def _injected_claims(self, line: bytes) -> bool:
        """`* ID` (`* LIST`) data answers an ID (a LIST) the proxy sent, even while client
        commands run - unless one of them is a LIST too."""
        kind = untagged_kind(line)
        if kind not in _CLAIMABLE or (
            kind in _LISTS and _LISTS & set(self._tracker.client_names())
        ):
            return False
        return any(command.name == kind for command in self._tracker.injected())

    def _hold_response(self, part: LinePart) -> None:
        """Keep a multi-part untagged response until it is complete, for the rules."""
        held = _HeldResponse([part.raw])
        self._up_held = held
        if part.literal is not None and part.literal.size == 0:
            held.literals.append(b"")

    def _held_response_event(self, event: FrameEvent) -> None:
        held = self._up_held
        assert held is not None
        if isinstance(event, LiteralData):
            held.literal += event.data
            if len(held.literal) > self.settings.capture_literal_max:
                # Too large to rewrite: relay what was kept and stream the rest unchanged.
                self._up_held = None
                self._out.append(ev.SendToClient(held.so_far()))
                self._client_open = True
            elif event.remaining == 0:
                held.literals.append(bytes(held.literal))
                held.literal.clear()
            return
        assert isinstance(event, LinePart)
        held.lines.append(event.raw)
        if event.literal is not None:
            if event.literal.size == 0:
                held.literals.append(b"")
            return
        self._up_held = None
        self._up_continues = False
        data, applied = self.hooks.rewrite_message(held.message())
        self._out += applied
        if data:
            self._out.append(ev.SendToClient(data))
        self._end_client_message()

    def _continuation(self, line: bytes) -> None:
        awaited, self._await = self._await, _Await.NOTHING
        if awaited is _Await.CONVERTED_LITERAL:
            return
        if awaited is _Await.PROXY_LITERAL:
            self._send_proxy_parts()
            return
        if awaited is _Await.SASL:
            self._role = _Role.SASL_RESPONSE
        elif awaited is _Await.IDLE:
            self._role = _Role.IDLE_DONE
            self._bridge_upstream_idle()
        elif awaited is _Await.REIDLE:
            if self._bridge is not None:
                self._bridge.step = _BridgeStep.IDLING
                self._bridge.since = None
            return
        self._out.append(ev.SendToClient(line))

    def _tagged(self, command: InFlight, part: LinePart, status: str) -> None:
        self._tracker.complete(command.tag)
        if self._await_tag == command.tag and self._await is not _Await.NOTHING:
            self._command_ended_early()
        if command.tag == self._await_tag and self._role is not _Role.COMMAND:
            self._role = _Role.COMMAND
        if command.on_complete is not None:
            self._relaying_response = False
            command.on_complete(part.raw, command.untagged)
            self._start_emulation_when_quiet()
            return
        # The state moves first: a LOGIN's [CAPABILITY] code lists post-login capabilities.
        before = self.state
        self.state = next_state(before, command.name, status)
        logged_in = command.name in AUTH_COMMANDS and before is ProtocolState.NOT_AUTHENTICATED
        if logged_in and self.state is ProtocolState.AUTHENTICATED:
            self._out += self.hooks.authenticated()
        line = part.raw
        if part.literal is None:
            caps = capabilities_in_line(line)
            if caps is not None:
                self.upstream_capabilities = caps
                line = rewrite_capability_line(line, self.client_capabilities())
        if logged_in and self.state is ProtocolState.AUTHENTICATED:
            for text, applied in self.hooks.after_login():
                self._out += applied
                name = text.split(b" ", 1)[0].decode("ascii").upper()
                self._inject(text, name, self._consumer(name))
        released = self.hooks.release_before_completion(command.name)
        if released:
            self._out.append(ev.SendToClient(released))
        if self.hooks.rules.watches_tagged and not logged_in:
            self._tagged_by_rules(command, part, line, None)
            return
        self._relay_line(part, line)
        self._out.append(
            ev.CommandCompleted(command.tag.decode("ascii", "replace"), command.name, status)
        )
        if logged_in:
            if self.state is ProtocolState.AUTHENTICATED:
                mechanism = "LOGIN" if command.name == "LOGIN" else self._sasl_mechanism
                self._out.append(ev.Authenticated(self.user, mechanism))
            else:
                self.user = None
                self.hooks.view.authenticated = False
        self._start_emulation_when_quiet()
        self._drain_if_quiet()

    def _tagged_by_rules(
        self, command: InFlight, part: LinePart, line: bytes, lookup: list[bytes] | None
    ) -> None:
        """A client command's completion, after the rules' `on_tagged` (stub FETCH)."""
        outcome, applied = self.hooks.on_tagged(command.tag, command.name, line, lookup)
        self._out += applied
        if outcome is not None and outcome.lookup is not None and lookup is None:
            if self._tracker.client_commands() == 0:
                # Learn the UIDs first; nothing else of the client's is in flight, so the
                # numbers mean what they meant for the command that just ended.
                numbers = outcome.lookup
                self._inject(
                    b"FETCH " + numbers + b" (UID)",
                    "FETCH",
                    lambda _done, untagged: self._uids_looked_up(
                        command, part, line, numbers, untagged
                    ),
                )
                return
            outcome, applied = self.hooks.on_tagged(command.tag, command.name, line, [])
            self._out += applied
        if outcome is not None:
            if outcome.untagged:
                self._out.append(ev.SendToClient(outcome.untagged))
            if outcome.bye is not None:
                self._bye(outcome.bye, "rule-bye")
                return
            line = outcome.line if outcome.line is not None else line
        self._relay_line(part, line)
        status = _status_of(line).decode("ascii", "replace")
        self._out.append(
            ev.CommandCompleted(command.tag.decode("ascii", "replace"), command.name, status)
        )
        self._start_emulation_when_quiet()
        self._drain_if_quiet()

    def _uids_looked_up(
        self, command: InFlight, part: LinePart, line: bytes, numbers: bytes, untagged: list[bytes]
    ) -> None:
        """The lookup's FETCH lines for those numbers go to the rule; anything else the
        upstream sent meanwhile (EXISTS, flag changes of other messages) to the client."""
        looked_up = parse_sequence_set(numbers, Side.CLIENT)
        answers: list[bytes] = []
        for data in untagged:
            found = _FETCH_NUMBER.match(data)
            if found is not None and looked_up.contains(int(found.group(1)), 0):
                answers.append(data)
            else:
                self._out.append(ev.SendToClient(data))
        self._tagged_by_rules(command, part, line, answers)

    def _command_ended_early(self) -> None:
        """The upstream answered a command that was still waiting for its `+`."""
        awaited, self._await = self._await, _Await.NOTHING
        if awaited is _Await.CLIENT_LITERAL:
            # The client never got `+`, so it will not send the literal.
            self._client.cancel_literal()
            self._msg = None
            self._upstream_open = False
            self._flush_deferred_upstream()
        elif awaited is _Await.CONVERTED_LITERAL and self._msg is not None:
            # The client sent (or is sending) its LITERAL+ data: drop the rest of it.
            self._msg.mode = _Mode.DISCARD
            self._upstream_open = False
            self._flush_deferred_upstream()
        elif awaited is _Await.PROXY_LITERAL:
            self._proxy_parts.clear()

    def _drain_if_quiet(self) -> None:
        if (
            self._draining
            and len(self._tracker) == 0
            and self._msg is None
            and self._emulation is None
        ):
            self._bye(b"[UNAVAILABLE] Server shutting down", "shutdown")

    # ----------------------------------------------------- before the greeting

    def _pre_greeting_response(self, part: LinePart) -> None:
        line = part.raw
        if self._phase is _Phase.GREETING:
            self._greet(line)
            return
        if line.startswith(b"* "):
            self._untagged(part)
            return
        tag = line.split(b" ", 1)[0]
        command = self._tracker.get(tag)
        if command is None or not command.injected:
            self._out.append(ev.ProtocolViolation(Side.UPSTREAM, "unexpected response"))
            self._bye(b"[UNAVAILABLE] Upstream server protocol error", "upstream-protocol-error")
            return
        status = line[len(tag) + 1 :].split(b" ", 1)[0].rstrip(b"\r\n").upper()
        self._tagged(command, part, status.decode("ascii", "replace"))

    def _greet(self, line: bytes) -> None:
        word = line[2:].split(b" ", 1)[0].rstrip(b"\r\n").upper()
        if not line.startswith(b"* ") or word not in (b"OK", b"PREAUTH", b"BYE"):
            self._out.append(ev.ProtocolViolation(Side.UPSTREAM, "invalid greeting"))
            self._bye(b"[UNAVAILABLE] Upstream server sent no valid greeting", "upstream-greeting")
            return
        if word == b"BYE":
            self._out.append(ev.SendToClient(line))
            self._close("upstream-refused")
            return
        self._greeting = line
        self.hooks.view.greeting = line
        if word == b"PREAUTH":
            self.state = ProtocolState.AUTHENTICATED
            self.hooks.view.authenticated = True
        caps = capabilities_in_line(line)
        if self.settings.upstream_starttls:
            if word == b"PREAUTH":
                self._bye(b"[UNAVAILABLE] Upstream server refused STARTTLS", "upstream-tls")
                return
            self._phase = _Phase.UPSTREAM_STARTTLS
            self._inject(b"STARTTLS", "STARTTLS", self._upstream_starttls_done)
        elif caps is None:
            self._probe_capabilities()
        else:
            self.upstream_capabilities = caps
            self._ready()

    def _inject(self, command: bytes, name: str, on_complete: _Completion) -> None:
        tag = self._tracker.new_proxy_tag()
        self._tracker.add(InFlight(tag, name, on_complete=on_complete))
        self._to_upstream(tag + b" " + command + b"\r\n")

    def _upstream_starttls_done(self, line: bytes, _untagged: list[bytes]) -> None:
        if _status_of(line) != b"OK":
            self._bye(b"[UNAVAILABLE] Upstream server refused STARTTLS", "upstream-tls")
            return
        if self._upstream.buffered:
            # Bytes after the OK and before TLS would be an injection by a middlebox.
            self._bye(b"[UNAVAILABLE] Upstream server sent data before TLS", "upstream-tls")
            return
        self._phase = _Phase.UPSTREAM_TLS
        self._out.append(ev.StartUpstreamTLS())

    def _probe_capabilities(self) -> None:
        self._phase = _Phase.PROBING
        self._inject(b"CAPABILITY", "CAPABILITY", self._probe_done)

    def _probe_done(self, line: bytes, untagged: list[bytes]) -> None:
        caps: list[str] = []
        for data in untagged:
            found = capabilities_in_line(data)
            if found is not None:
                caps = found
        code_caps = capabilities_in_line(line)
        self.upstream_capabilities = code_caps if code_caps is not None else caps
        self._ready()

    def _ready(self) -> None:
        self._phase = _Phase.RELAYING
        self._out.append(ev.SendToClient(self._client_greeting()))
        self._out.append(ev.UpstreamReady(tuple(self.upstream_capabilities)))

    def _client_greeting(self) -> bytes:
        line = self._greeting
        caps = self.client_capabilities()
        if capabilities_in_line(line) is not None:
            return rewrite_capability_line(line, caps)
        head, _, text = line.partition(b" ")[2].partition(b" ")
        prefix = b"* " + head.rstrip(b"\r\n") + b" "
        if text.startswith(b"["):
            return line  # another response code is there; the client will ask
        code = b"[CAPABILITY " + " ".join(caps).encode("ascii") + b"]"
        if not text.strip():
            return prefix + code + b" Ready\r\n"
        return prefix + code + b" " + text

    # ------------------------------------------------------- client → upstream

    def _client_event(self, event: FrameEvent) -> None:
        if isinstance(event, LiteralData):
            self._client_literal(event)
            return
        assert isinstance(event, LinePart)
        if self._msg is not None:
            self._message_line(event)
        elif self._role is _Role.SASL_RESPONSE:
            self._sasl_response(event.raw)
        elif self._role is _Role.IDLE_DONE:
            self._role = _Role.COMMAND
            bridge, self._bridge = self._bridge, None
            if bridge is not None and bridge.polling:
                self._polled_idle_done(bridge, event)
            else:
                self._out.append(ev.SendToUpstream(event.raw))
        elif self._stray_done and event.literal is None and event.raw.strip().upper() == b"DONE":
            self._stray_done = False  # ends an IDLE that was answered already
        else:
            self._stray_done = False
            self._start_command(event)

    def _sasl_response(self, line: bytes) -> None:
        if self.user is None and self._sasl_mechanism:
            self.user = sasl_user(self._sasl_mechanism, line.strip())
        self._role = _Role.COMMAND
        self._await = _Await.SASL
        self._out.append(ev.SendToUpstream(line))

    def _start_command(self, part: LinePart) -> None:
        peeked = peek_command(part.raw)
        if peeked is None and part.literal is None and not part.raw.strip():
            ignored = self.hooks.empty_line_ignored()
            if ignored is not None:
                self._out += ignored  # a rule drops bare CRLF lines (Q24)
                return
        if peeked is None:
            # No tag we can track (an empty line, garbage): the upstream answers it.
            self._msg = _ClientMessage(b"", "OTHER", _Mode.STREAM)
            self._message_line(part)
            return
        tag, name = peeked
        msg = _ClientMessage(tag, name, _Mode.STREAM)
        self._msg = msg
        if self.hooks.rules.maps_tags:
            upstream_tag, applied = self.hooks.upstream_tag(tag)
            # Never a tag one of the client's own commands in flight carries upstream.
            if upstream_tag != tag and self._tracker.get(upstream_tag) is None:
                msg.upstream_tag = upstream_tag
                self._out += applied
        self._out.append(ev.CommandStarted(tag.decode("ascii", "replace"), name))
        authenticated = self.state is not ProtocolState.NOT_AUTHENTICATED
        self._out += self.hooks.command_started(tag, name, part.raw, authenticated)
        if name in _MAILBOX_SWITCHES:
            self.hooks.drop_held()
        if name == "STARTTLS":
            msg.mode = _Mode.DISCARD
            self._starttls(part, tag)
        elif name == "IDLE" and authenticated and self._idle_poller() is not None:
            msg.mode = _Mode.DISCARD
            self._polled_idle(tag, part)
        elif name in AUTH_COMMANDS and self.settings.require_tls and not self._client_tls:
            msg.mode = _Mode.DISCARD
            self._answer(tag, name, _PRIVACY_REQUIRED)
        elif name == "ID" or self.hooks.wants_whole(name, part.raw):
            msg.mode = _Mode.HOLD
        elif self.hooks.wants_head(name, part.raw):
            msg.mode = _Mode.HEAD
        else:
            msg.capture = name in AUTH_COMMANDS
            self._tracker.add(InFlight(tag, name))
        if self._msg is msg:
            self._message_line(part)

    def _answer(self, tag: bytes, name: str, tail: bytes, untagged: bytes = b"") -> None:
        """The proxy answers a command itself."""
        self._to_client(untagged + tag + b" " + tail + b"\r\n")
        status = tail.split(b" ", 1)[0].decode("ascii")
        self._out.append(
            ev.CommandCompleted(tag.decode("ascii", "replace"), name, status, by_proxy=True)
        )

    def _message_line(self, part: LinePart) -> None:
        msg = self._msg
        assert msg is not None
        literal = part.literal
        if msg.mode is _Mode.DISCARD:
            if literal is not None and literal.synchronizing:
                self._client.cancel_literal()  # we sent no `+`: the client sends no literal
                literal = None
            if literal is None:
                self._end_command_message()
            return
        if msg.capture and msg.mode is _Mode.STREAM and self._over_hold_limit(msg, _size(part)):
            # Too large to parse (a client announcing literal after literal): it still
            # streams upstream; only the copy kept for parsing is dropped.
            msg.capture = False
            msg.lines.clear()
            msg.literals.clear()
            msg.literal = None
        if msg.capture or msg.mode in (_Mode.HOLD, _Mode.HEAD):
            msg.lines.append(part.raw)
        if msg.mode is _Mode.HOLD:
            self._hold_line(msg, part)
            return
        if msg.mode is _Mode.HEAD:
            self._head_line(msg, part)
            return
        raw = part.raw
        if msg.upstream_tag is not None:
            raw = self._retag(msg, raw)
        if literal is not None and not literal.synchronizing and not self._upstream_takes(literal):
            # The upstream lacks LITERAL+: send a synchronizing literal and hold the
            # client's data in the framer until the upstream's `+` arrives.
            raw = (
                raw[: literal.start]
                + (b"~" if literal.binary else b"")
                + b"{"
                + (str(literal.size).encode() + b"}" + raw[len(raw.rstrip(b"\r\n")) :])
            )
            self._expect_continuation(msg.tag, _Await.CONVERTED_LITERAL)
        elif literal is not None and literal.synchronizing:
            self._expect_continuation(msg.tag, _Await.CLIENT_LITERAL)
        elif literal is None and msg.name == "AUTHENTICATE":
            self._start_sasl(msg)
        elif literal is None and msg.name == "IDLE":
            self._expect_continuation(msg.tag, _Await.IDLE)
        self._out.append(ev.SendToUpstream(raw))
        if literal is None:
            self._end_command_message()
        else:
            self._upstream_open = True
            if msg.capture:
                self._begin_capture(msg, literal.size)

    @staticmethod
    def _begin_capture(msg: _ClientMessage, size: int) -> None:
        if size:
            msg.literal = bytearray()
        else:
            msg.literals.append(b"")  # the framer yields no data for {0}

    def _upstream_takes(self, literal: object) -> bool:
        caps = self.upstream_capabilities
        if has_capability(caps, "LITERAL+"):
            return True
        size = getattr(literal, "size", 0)
        return has_capability(caps, "LITERAL-") and size <= 4096

    def _expect_continuation(self, tag: bytes, what: _Await) -> None:
        self._await = what
        self._await_tag = tag

    def _client_literal(self, chunk: LiteralData) -> None:
        msg = self._msg
        if msg is None:
            return
        if msg.mode is _Mode.STREAM:
            self._out.append(ev.SendToUpstream(chunk.data))
        if msg.literal is not None:
            if len(msg.literal) + len(chunk.data) <= self.settings.capture_literal_max:
                msg.literal += chunk.data
            else:
                msg.capture = False
                msg.literal = None
        if chunk.remaining == 0 and msg.literal is not None:
            msg.literals.append(bytes(msg.literal))
            msg.literal = None

    def _end_command_message(self) -> None:
        msg = self._msg
        self._msg = None
        self._upstream_open = False
        if msg is not None and msg.capture and msg.name == "LOGIN":
            self.user = login_user(msg.message())
        self._flush_deferred_upstream()
        self._drain_if_quiet()

    def _flush_deferred_upstream(self) -> None:
        if self._deferred_upstream:
            self._out.append(ev.SendToUpstream(b"".join(self._deferred_upstream)))
            self._deferred_upstream.clear()

    def _start_sasl(self, msg: _ClientMessage) -> None:
        words = msg.lines[0].split()
        self._sasl_mechanism = words[2].decode("ascii", "replace").upper() if len(words) > 2 else ""
        if len(words) > 3 and words[3] != b"=":
            self.user = sasl_user(self._sasl_mechanism, words[3])
        self._expect_continuation(msg.tag, _Await.SASL)

    # ----------------------------------------------------- commands we handle

    def _starttls(self, part: LinePart, tag: bytes) -> None:
        offered = (
            self.settings.starttls_available
            and not self._client_tls
            and self.state is ProtocolState.NOT_AUTHENTICATED
        )
        if not offered or part.literal is not None or self._client_open:
            self._answer(tag, "STARTTLS", _BAD_STARTTLS_NOT_OFFERED)
            return
        self._answer(tag, "STARTTLS", b"OK Begin TLS negotiation now")
        self._msg = None
        dropped = self._client.discard_buffered()
        if dropped:
            self._out.append(ev.PlaintextDiscarded(dropped))
        self._phase = _Phase.CLIENT_TLS
        self._out.append(ev.StartClientTLS())

    def _hold_line(self, msg: _ClientMessage, part: LinePart) -> None:
        literal = part.literal
        if literal is None:
            self._msg = None
            self._held_command_complete(msg)
            return
        if literal.size > self.settings.capture_literal_max or self._over_hold_limit(
            msg, literal.size
        ):
            msg.mode = _Mode.DISCARD
            self._answer(msg.tag, msg.name, b"BAD Argument too long")
            if literal.synchronizing:
                self._client.cancel_literal()
                self._msg = None
            return
        self._begin_capture(msg, literal.size)
        if literal.synchronizing:
            self._to_client(b"+ Ready for literal data\r\n")

    def _over_hold_limit(self, msg: _ClientMessage, extra: int) -> bool:
        """A command kept whole may hold one line's worth of lines plus one literal's
        worth of literals (`extra`: octets about to be added); more (a literal announced
        after every literal) is refused, so what a session keeps stays bounded."""
        held = sum(map(len, msg.lines)) + sum(len(data or b"") for data in msg.literals)
        limit = self.settings.client_limits.max_line_length + self.settings.capture_literal_max
        return held + extra > limit

    def _held_command_complete(self, msg: _ClientMessage) -> None:
        message = msg.message()
        try:
            command = parse_command(message)
        except ProtocolError as error:
            self._answer(msg.tag, msg.name, b"BAD Invalid arguments: " + _printable(error.text))
            return
        authenticated = self.state is not ProtocolState.NOT_AUTHENTICATED
        if msg.name == "ID":
            try:
                params = parse_id_params(command)
            except ProtocolError:
                self._answer(msg.tag, msg.name, b"BAD Invalid ID arguments")
                return
            self._out += self.hooks.id_seen(params, authenticated)
        elif self.hooks.wants_mailbox_list(command):
            self._learn_mailboxes(lambda: self._held_command_complete(msg))
            return
        outcome, applied = self.hooks.on_command(command)
        self._out += applied
        if isinstance(outcome, LocalAnswer):
            self._answer(msg.tag, msg.name, outcome.status_text, untagged=outcome.untagged)
            return
        if isinstance(outcome, Emulate):
            self._emulation = _Emulation(msg.tag, msg.name, outcome)
            self._start_emulation_when_quiet()
            return
        if isinstance(outcome, ReplaceCommand):
            self._replace_command(msg.tag, msg.name, outcome)
            return
        outgoing: Message | None
        if msg.name == "ID":
            outgoing = rewrite_id_command(outcome, message, self.settings)
        elif outcome is command:
            outgoing = message  # untouched: the original bytes go upstream
        else:
            outgoing = encode_command(outcome.tag, outcome.name, outcome.args)
        if outgoing is None:
            self._answer(msg.tag, msg.name, b"BAD Invalid ID arguments")
            return
        self._tracker.add(InFlight(msg.tag, msg.name))
        if msg.upstream_tag is not None:
            lines = (self._retag(msg, outgoing.lines[0]), *outgoing.lines[1:])
            outgoing = Message(lines, outgoing.literals)
        self._send_message(msg.tag, outgoing)

    # ----------------------------------------------------------- emulations

    def _start_emulation_when_quiet(self) -> None:
        """Run the pending emulation once nothing else is in flight upstream."""
        self._polled_idle_when_quiet()
        emulation = self._emulation
        if emulation is None or emulation.started or len(self._tracker) > 0:
            return
        if self._phase is not _Phase.RELAYING:
            return
        emulation.started = True
        self._advance_emulation(None)

    def _advance_emulation(self, result: StepResult | None) -> None:
        emulation = self._emulation
        assert emulation is not None
        script = emulation.emulate.script
        try:
            step = next(script) if result is None else script.send(result)
        except StopIteration as stop:
            self._finish_emulation(stop.value)
            return
        except ProtocolError:
            # The upstream's data did not parse where the script needed it.
            answer = EmulationAnswer(b"", b"NO [SERVERBUG] Unexpected upstream response", "failed")
            self._finish_emulation(answer)
            return
        tag = self._tracker.new_proxy_tag()
        self._tracker.add(InFlight(tag, step.name, on_complete=self._emulation_step_done))
        self._send_message(tag, encode_command(tag, step.name, step.args))

    def _emulation_step_done(self, line: bytes, untagged: list[bytes]) -> None:
        if self._emulation is None:  # pragma: no cover - the session ended meanwhile
            return
        status = _status_of(line).decode("ascii", "replace")
        self._advance_emulation(StepResult(status, line, tuple(untagged)))

    def _finish_emulation(self, answer: EmulationAnswer) -> None:
        emulation = self._emulation
        assert emulation is not None
        self._emulation = None
        if emulation.emulate.replies:
            untagged, applied = self.hooks.rewrite_replies(
                answer.untagged, emulation.tag, emulation.name
            )
            self._out += applied
            answer = replace(answer, untagged=untagged)
        if self.hooks.rules.watches_untagged:
            # What the emulation shows the client (EXPUNGEs, UIDs) is what rules follow too.
            for line in answer.untagged.splitlines(keepends=True):
                kind = untagged_kind(line)
                if self.hooks.observes(kind):
                    self.hooks.observe_untagged(kind, line, False, self._tracker.client_names)
        status = answer.status_text.split(b" ", 1)[0].decode("ascii", "replace").upper()
        self.state = next_state(self.state, emulation.name, status)  # CLOSE leaves SELECTED
        released = b""
        for line in answer.untagged.splitlines(keepends=True):
            # A held EXISTS goes before an EXPUNGE: the client must know every number.
            released = self.hooks.release_before_untagged(untagged_kind(line))
            if released:
                break
        self._answer(
            emulation.tag, emulation.name, answer.status_text, untagged=released + answer.untagged
        )
        rule_id, kind = emulation.emulate.rule_id, emulation.emulate.kind
        self._out.append(ev.EmulationFinished(rule_id, kind, answer.outcome))
        self._drain_if_quiet()

    def _head_line(self, msg: _ClientMessage, part: LinePart) -> None:
        literal = part.literal
        if literal is None:  # no literal to stream after all: the command is held whole
            self._msg = None
            self._held_command_complete(msg)
            return
        head = Message((*msg.lines, b"\r\n"), (*msg.literals, None))
        try:
            command: Command | None = parse_command(head)
        except ProtocolError:
            command = None
        if command is None or len(command.args) < 2:
            # `APPEND {11}` - the literal is the mailbox name itself: keep it, read on.
            self._hold_line(msg, part)
            return
        self._head_complete(msg, command, part, literal)

    def _head_complete(
        self, msg: _ClientMessage, command: Command, part: LinePart, literal: LiteralHeader
    ) -> None:
        """Send the (rewritten) head of a command, then stream the rest of it."""
        if self.hooks.wants_mailbox_list(command):
            self._learn_mailboxes(lambda: self._head_complete(msg, command, part, literal))
            return
        outcome, applied = self.hooks.on_command(command)
        self._out += applied
        answered = False
        if isinstance(outcome, LocalAnswer):
            answered = True
            self._answer(msg.tag, msg.name, outcome.status_text, untagged=outcome.untagged)
        elif isinstance(outcome, Emulate | ReplaceCommand):  # none for a command that streams
            answered = True
            self._answer(msg.tag, msg.name, b"NO [SERVERBUG] Cannot emulate this command")
        elif outcome is not command or len(msg.lines) > 1:
            plus = has_capability(self.upstream_capabilities, "LITERAL+")
            marker = b"+" if plus else b""
            fragment = encode_command(
                outcome.tag, outcome.name, outcome.args[:-1], literal_marker=marker
            )
            if fragment.literals and not plus:  # an 8-bit name: it needs a literal of its own
                answered = True
                self._answer(msg.tag, msg.name, b"NO [CANNOT] This mailbox name needs LITERAL+")
            else:
                head = fragment.to_bytes().rstrip(b"\r\n") + b" "
                part = LinePart(head + part.raw[literal.start :], replace(literal, start=len(head)))
        if answered:  # the client's message literal is not wanted
            msg.mode = _Mode.DISCARD
            if literal.synchronizing:
                self._client.cancel_literal()
                self._end_command_message()
            return
        msg.mode = _Mode.STREAM
        msg.lines.clear()
        self._tracker.add(InFlight(msg.tag, msg.name))
        self._message_line(part)

    def _learn_mailboxes(self, resume: Callable[[], None]) -> None:
        """Send `LIST "" "*"` for the rules to learn from; then carry on with `resume`."""
        self._learning = True

        def learnt(_line: bytes, untagged: list[bytes]) -> None:
            self._learning = False
            self.hooks.learn_mailboxes([line for line in untagged if untagged_kind(line) == "LIST"])
            for line in untagged:  # whatever else came meanwhile is the client's
                if untagged_kind(line) != "LIST":
                    self._to_client(line)
            resume()

        self._inject(b'LIST "" "*"', "LIST", learnt)

    def _consumer(self, name: str) -> _Completion:
        """For a command the proxy sends for its own reasons: its answer is nobody's, but
        other untagged data that came meanwhile (an [ALERT], new mail) is the client's."""

        def consume(_line: bytes, untagged: list[bytes]) -> None:
            others = b"".join(line for line in untagged if untagged_kind(line) != name)
            if others:
                self._to_client(others)

        return consume

    def _replace_command(self, tag: bytes, name: str, emulation: ReplaceCommand) -> None:
        """The proxy's own command stands in for the client's; answer from its outcome."""
        if emulation.selected_only and self.state is not ProtocolState.SELECTED:
            self._answer(tag, name, b"BAD No mailbox selected")
            return

        def done(line: bytes, untagged: list[bytes]) -> None:
            answer = emulation.answer(line, untagged)
            status = answer.status_text.split(b" ", 1)[0].decode("ascii", "replace").upper()
            self.state = next_state(self.state, name, status)
            self._answer(tag, name, answer.status_text, untagged=answer.untagged)
            self._drain_if_quiet()

        self._inject(emulation.command, emulation.name, done)

    def _send_message(self, tag: bytes, message: Message) -> None:
        """Send a message the proxy built, minding the upstream's literal support."""
        if not message.literals:
            self._to_upstream(message.lines[0])
            return
        if has_capability(self.upstream_capabilities, "LITERAL+"):
            lines = [_non_synchronizing(line) for line in message.lines[:-1]]
            lines.append(message.lines[-1])
            self._to_upstream(Message(tuple(lines), message.literals).to_bytes())
            return
        self._to_upstream(message.lines[0])
        parts: list[bytes] = []
        for literal, line in zip(message.literals, message.lines[1:], strict=True):
            assert literal is not None
            parts.append(literal + line)
        self._proxy_parts = parts
        self._expect_continuation(tag, _Await.PROXY_LITERAL)

    def _send_proxy_parts(self) -> None:
        part = self._proxy_parts.pop(0)
        self._to_upstream(part)
        if self._proxy_parts:
            self._await = _Await.PROXY_LITERAL

    # ------------------------------------------------------------ IDLE bridge

    def _idle_poller(self) -> Action | None:
        """The rule that answers IDLE itself, when the upstream has no IDLE of its own."""
        if has_capability(self.upstream_capabilities, "IDLE"):
            return None
        return self.hooks.rules.idle_poller()

    def _bridge_upstream_idle(self) -> None:
        """The upstream accepted the client's IDLE: a rule may keep it going."""
        action = self.hooks.rules.reidler()
        if action is not None and action.reidle_after is not None and self._await_tag:
            self._bridge = _IdleBridge(self._await_tag, action, action.reidle_after, False)

    def _bridged_idle_ended(self, status: str) -> bool:
        """A tagged answer to the IDLE the client is in (and has not ended: its DONE ends
        the bridge). After our DONE, an OK is ours: swallowed, and our own IDLE continues
        the client's (True). Anything else (the renewal refused, the upstream ending the
        IDLE itself) ends the client's IDLE, and the DONE the client will send is dropped."""
        bridge = self._bridge
        assert bridge is not None
        if bridge.step is _BridgeStep.ENDING and status == "OK":
            upstream_tag = self._tracker.new_proxy_tag()
            self._tags_back.setdefault(upstream_tag, []).append(bridge.tag)
            bridge.step = _BridgeStep.STARTING
            self._expect_continuation(bridge.tag, _Await.REIDLE)
            self._to_upstream(upstream_tag + b" IDLE\r\n")
            return True
        self._stray_done = True  # the client has not ended this IDLE: its DONE will come
        self._bridge = None
        return False

    def _polled_idle(self, tag: bytes, part: LinePart) -> None:
        """The client's IDLE, for an upstream without IDLE: `+` from the proxy."""
        action = self._idle_poller()
        assert action is not None and action.poll_interval is not None
        if part.literal is not None or part.raw.split(None, 1)[1].strip().upper() != b"IDLE":
            self._answer(tag, "IDLE", b"BAD IDLE takes no arguments")
            return
        self._bridge = _IdleBridge(tag, action, action.poll_interval, True, _BridgeStep.WAITING)
        self._role = _Role.IDLE_DONE
        self._out += self.hooks.record([(action.rule_id, action.kind)])
        self._polled_idle_when_quiet()

    def _polled_idle_when_quiet(self) -> None:
        """`+` for a polled IDLE once the client's earlier commands have their answers."""
        bridge = self._bridge
        if bridge is not None and bridge.step is _BridgeStep.WAITING and len(self._tracker) == 0:
            bridge.step = _BridgeStep.IDLING
            self._to_client(b"+ idling\r\n")

    def _polled(self, _line: bytes, untagged: list[bytes]) -> None:
        """Our NOOP ended; its untagged data has gone to the client already (or is here)."""
        if untagged:
            self._to_client(b"".join(untagged))
        bridge = self._bridge
        if bridge is not None and bridge.step is _BridgeStep.POLLING:
            bridge.step = _BridgeStep.IDLING
            bridge.since = None

    def _polled_idle_done(self, bridge: _IdleBridge, part: LinePart) -> None:
        """The client ends a polled IDLE (no NOOP is out: reading waits for it)."""
        if part.literal is None and part.raw.strip().upper() == b"DONE":
            self._answer(bridge.tag, "IDLE", b"OK IDLE terminated")
        else:
            if part.literal is not None and part.literal.synchronizing:
                self._client.cancel_literal()
            elif part.literal is not None:
                self._msg = _ClientMessage(b"", "OTHER", _Mode.DISCARD)
            self._answer(bridge.tag, "IDLE", b"BAD Expected DONE")
        self._drain_if_quiet()


def _size(part: LinePart) -> int:
    """Octets a line and the literal it announces add to a message."""
    return len(part.raw) + (part.literal.size if part.literal is not None else 0)


_FETCH_NUMBER = re.compile(rb"\* (\d{1,10}) FETCH ")


def _printable(text: str) -> bytes:
    """A parser's message, safe inside a response line."""
    return bytes(c if 0x20 <= c < 0x7F else 0x3F for c in text.encode("ascii", "replace")[:200])


def _status_of(line: bytes) -> bytes:
    return line.split(b" ", 2)[1].rstrip(b"\r\n").upper() if b" " in line else b""


def _non_synchronizing(line: bytes) -> bytes:
    stripped = line.rstrip(b"\r\n")
    return stripped[:-1] + b"+}" + line[len(stripped) :]

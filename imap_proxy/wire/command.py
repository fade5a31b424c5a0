"""Client commands: a fast peek at every command line, and a generic parse when needed.

How this works: `peek_command()` runs on the first line of every client command. It does
no lexing: it splits off the tag and the verb (and the verb after `UID`) with `find`,
checks the tag against the RFC 3501 tag alphabet with one `bytes.translate`, and returns
`(tag, "UID FETCH")` or None when the line has no tag and name (a SASL response, `DONE`).

`parse_command()` turns a whole framed `Message` into `Command(tag, name, args)`, where
`args` are the values after the name as the lexer reads them (see
`imap_proxy.wire.syntax`): a sequence set is an `Atom`, `(FLAGS BODY[])` a `ParenList`,
strings are `Quoted` or `LiteralString`. Clients repeat many commands word for word (a
sync's `UID FETCH 1:* (FLAGS)`, `NOOP`, the same `SELECT`), so the parse of a short
one-line command is remembered by its text after the tag (`_REMEMBERED`, bounded) and
given back under the new tag; never for commands that carry credentials (only the
names in `_REMEMBERED_NAMES` are), and never for an error. The typed accessors give
rules what they need without a grammar per command: `mailbox_args()` (which arguments
are mailbox names) and `parse_id_params()` (the fields of `ID`). Errors are
`ParseError(Side.CLIENT, ...)`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from imap_proxy.wire.errors import ParseError, ProtocolError, Side
from imap_proxy.wire.lexer import DEFAULT_MAX_DEPTH, Lexer
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import (
    Atom,
    ParenList,
    SequenceSet,
    Value,
    id_params,
    parse_sequence_set,
)

_ALL_OCTETS: Final = bytes(range(256))
# RFC 3501: tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]".
TAG_CHARS: Final = bytes(c for c in range(0x21, 0x7F) if c not in b'(){%*"\\+')
# Command names: letters, digits and the few marks extension verbs use (X-FOO, XLIST).
_NAME_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_MAX_NAME: Final = 64
_REMEMBERED: Final = 512  # parses of distinct command texts remembered
_REMEMBERED_MAX_LINE: Final = 512  # octets; longer lines are parsed every time
_PLAIN_TAG: Final = re.compile(rb"[A-Za-z0-9._-]{1,64}")  # read alike by peek and lexer
_REMEMBERED_NAMES: Final = frozenset(
    {
        *("FETCH", "UID FETCH", "STORE", "UID STORE", "SEARCH", "UID SEARCH"),
        *("COPY", "UID COPY", "MOVE", "UID MOVE", "EXPUNGE", "UID EXPUNGE"),
        *("SELECT", "EXAMINE", "STATUS", "LIST", "LSUB", "NOOP", "IDLE", "CHECK"),
        *("CLOSE", "UNSELECT", "CAPABILITY", "NAMESPACE", "ENABLE"),
    }
)


def is_valid_tag(tag: bytes) -> bool:
    """True for a client tag (no `+`, `*`, spaces or other atom-specials; not empty)."""
    return bool(tag) and not tag.translate(_ALL_OCTETS, TAG_CHARS)


def _is_valid_name(name: bytes) -> bool:
    return 0 < len(name) <= _MAX_NAME and not name.translate(_ALL_OCTETS, _NAME_CHARS)


def _content_end(line: bytes) -> int:
    if line.endswith(b"\r\n"):
        return len(line) - 2
    if line.endswith(b"\n"):
        return len(line) - 1
    return len(line)


def _word_at(line: bytes, start: int, end: int) -> tuple[bytes, int]:
    """The word starting at `start` (up to a space or `end`) and the offset after it."""
    stop = line.find(b" ", start, end)
    if stop < 0:
        stop = end
    return line[start:stop], stop


def _skip_spaces(line: bytes, pos: int, end: int) -> int:
    while pos < end and line[pos] == 0x20:
        pos += 1
    return pos


def peek_command(first_line: bytes) -> tuple[bytes, str] | None:
    """Tag and uppercase command name ("UID FETCH" with its prefix), or None.

    Runs of spaces between the words are taken as one, as `parse_command` takes them: a
    line the parser would read as a command must never pass as untracked garbage (an
    upstream that tolerates `a  LOGIN` would otherwise log in unseen by the proxy).
    """
    end = _content_end(first_line)
    tag, after_tag = _word_at(first_line, 0, end)
    if after_tag >= end or not is_valid_tag(tag):
        return None
    name, after_name = _word_at(first_line, _skip_spaces(first_line, after_tag, end), end)
    if not _is_valid_name(name):
        return None
    upper = name.upper()
    if upper == b"UID":
        start = _skip_spaces(first_line, after_name, end)
        if start >= end:
            return None
        sub, _ = _word_at(first_line, start, end)
        if not _is_valid_name(sub):
            return None
        upper = b"UID " + sub.upper()
    return tag, upper.decode("ascii")


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed client command; `name` is uppercase with its UID prefix ("UID MOVE")."""

    tag: bytes
    name: str
    args: tuple[Value, ...]

    @property
    def uid(self) -> bool:
        return self.name.startswith("UID ")


def parse_command(message: Message, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Command:
    """Parse a whole client command; ParseError/LimitExceeded (side CLIENT) if it is not one."""
    line = message.lines[0]
    if len(message.lines) == 1 and max_depth == DEFAULT_MAX_DEPTH:
        peeked = peek_command(line) if len(line) <= _REMEMBERED_MAX_LINE else None
        if (
            peeked is not None
            and peeked[1] in _REMEMBERED_NAMES
            and _PLAIN_TAG.fullmatch(peeked[0]) is not None
        ):
            tag = peeked[0]
            try:
                remembered = _parse_after_tag(line[len(tag) :])
            except ProtocolError:
                pass  # parsed again below, for an error that names the real tag's offsets
            else:
                return Command(tag, remembered.name, remembered.args)
    return _parse(message, max_depth)


@functools.lru_cache(maxsize=_REMEMBERED)
def _parse_after_tag(rest: bytes) -> Command:
    return _parse(Message.from_line(b"t" + rest), DEFAULT_MAX_DEPTH)


def _parse(message: Message, max_depth: int) -> Command:
    lexer = Lexer(message, Side.CLIENT, max_depth=max_depth)
    tag = lexer.read_word()
    if not is_valid_tag(tag):
        raise lexer.error(f"invalid tag {tag[:40]!r}")
    lexer.expect_space()
    name = lexer.read_word()
    if not _is_valid_name(name):
        raise lexer.error(f"invalid command name {name[:40]!r}")
    upper = name.upper().decode("ascii")
    if upper == "UID":
        lexer.expect_space()
        sub = lexer.read_word()
        if not _is_valid_name(sub):
            raise lexer.error(f"invalid UID command {sub[:40]!r}")
        upper = "UID " + sub.upper().decode("ascii")
    if not lexer.at_line_end():
        lexer.expect_space()
    return Command(tag, upper, lexer.read_values())


# Which arguments of a command are mailbox names (indices into Command.args). LIST and
# LSUB: the reference and the pattern; with LIST-EXTENDED selection options first, and the
# pattern may be a ParenList of patterns.
_MAILBOX_ARGS: Final[dict[str, tuple[int, ...]]] = {
    "SELECT": (0,),
    "EXAMINE": (0,),
    "CREATE": (0,),
    "DELETE": (0,),
    "RENAME": (0, 1),
    "SUBSCRIBE": (0,),
    "UNSUBSCRIBE": (0,),
    "LIST": (0, 1),
    "LSUB": (0, 1),
    "STATUS": (0,),
    "APPEND": (0,),
    "COPY": (1,),
    "MOVE": (1,),
    "UID COPY": (1,),
    "UID MOVE": (1,),
}


def mailbox_args(cmd: Command) -> list[int]:
    """Indices of `cmd.args` that name mailboxes (empty for commands that take none).

    Read them with `syntax.mailbox_bytes()` (NIL there is the mailbox "NIL"). For LIST
    with RFC 5258 selection options `LIST (SUBSCRIBED) "" "*"` the indices are shifted past
    the options; the pattern argument may then be a `ParenList` of patterns.
    """
    indices = _MAILBOX_ARGS.get(cmd.name, ())
    offset = 0
    if cmd.name == "LIST" and cmd.args and isinstance(cmd.args[0], ParenList):
        offset = 1
    return [index + offset for index in indices if index + offset < len(cmd.args)]


def parse_id_params(cmd: Command) -> list[tuple[bytes, bytes | None]] | None:
    """The field/value pairs of an `ID` command; None for `ID NIL`."""
    if cmd.name != "ID":
        raise ParseError(Side.CLIENT, f"{cmd.name} is not an ID command")
    if len(cmd.args) != 1:
        raise ParseError(Side.CLIENT, "ID takes one argument")
    return id_params(cmd.args[0], Side.CLIENT)


# --- FETCH ------------------------------------------------------------------------------

# RFC 9051 §6.4.5 macros, expanded as the RFC defines them.
FETCH_MACROS: Final[dict[bytes, tuple[bytes, ...]]] = {
    b"ALL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"),
    b"FAST": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"),
    b"FULL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"),
}


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """`FETCH 1:3 (UID BODY.PEEK[]<0.100>)`: the set (message numbers, or UIDs for UID
    FETCH), the items as sent (macros expanded, names uppercased outside the brackets)
    and whether the command was UID FETCH."""

    messages: SequenceSet
    items: tuple[bytes, ...]
    uid: bool
    modifiers: tuple[bytes, ...] = ()  # RFC 4466 fetch modifiers: CHANGEDSINCE, VANISHED


def _item_name(atom: bytes) -> bytes:
    open_at = atom.find(b"[")
    if open_at < 0:
        return atom.upper()
    return atom[:open_at].upper() + atom[open_at:]


def parse_fetch(cmd: Command) -> FetchRequest:
    """The set and items of FETCH / UID FETCH; ParseError if the arguments are not those.
    Remembered by name and arguments when they are short, as the command's parse is."""
    if _short(cmd.args):
        return _parse_fetch(cmd.name, cmd.args)
    return _parse_fetch.__wrapped__(cmd.name, cmd.args)


def _short(args: tuple[Value, ...]) -> bool:
    """Whether these arguments are small enough to be remembered (atoms, and lists of
    atoms, of at most `_REMEMBERED_MAX_LINE` octets in all)."""
    size = 0
    for arg in args:
        items = arg.items if isinstance(arg, ParenList) else (arg,)
        for item in items:
            size += len(item.value) if isinstance(item, Atom) else _REMEMBERED_MAX_LINE + 1
    return size <= _REMEMBERED_MAX_LINE


@functools.lru_cache(maxsize=_REMEMBERED)
def _parse_fetch(command_name: str, args: tuple[Value, ...]) -> FetchRequest:
    cmd = Command(b"t", command_name, args)
    if cmd.name not in ("FETCH", "UID FETCH"):
        raise ParseError(Side.CLIENT, f"{cmd.name} is not FETCH")
    if len(cmd.args) < 2 or not isinstance(cmd.args[0], Atom):
        raise ParseError(Side.CLIENT, "FETCH takes a sequence set and items")
    messages = parse_sequence_set(cmd.args[0].value, Side.CLIENT)
    spec = cmd.args[1]
    raw: tuple[Value, ...] = spec.items if isinstance(spec, ParenList) else (spec,)
    items: list[bytes] = []
    for value in raw:
        if not isinstance(value, Atom):
            raise ParseError(Side.CLIENT, "FETCH items must be atoms")
        name = _item_name(value.value)
        items.extend(
            FETCH_MACROS.get(name, (name,)) if not isinstance(spec, ParenList) else (name,)
        )
    if not items:
        raise ParseError(Side.CLIENT, "FETCH needs at least one item")
    modifiers: list[bytes] = []
    for extra in cmd.args[2:]:
        if not isinstance(extra, ParenList):
            raise ParseError(Side.CLIENT, "FETCH modifiers must be a list")
        modifiers += [
            v.value.upper() for v in extra.items if isinstance(v, Atom) and not v.value.isdigit()
        ]
    return FetchRequest(messages, tuple(items), cmd.uid, tuple(modifiers))


def command_set(cmd: Command) -> SequenceSet | None:
    """The sequence set a message command (FETCH, STORE, COPY, MOVE and their UID forms)
    starts with; None when the first argument is not one."""
    if not cmd.args or not isinstance(cmd.args[0], Atom):
        return None
    try:
        return parse_sequence_set(cmd.args[0].value, Side.CLIENT)
    except ParseError:
        return None

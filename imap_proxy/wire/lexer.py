"""Lexer: turn a framed `Message` into IMAP values, one token at a time.

How this works: a `Message` is a list of raw lines with the literal octets between them;
line i (but the last) ends with the announcement of literal i. The lexer walks the lines
with a cursor (line index, offset), the terminator of each line stripped. Reading a
literal token (`{n}`, `{n+}`, `{n-}`, `~{n}`) checks it is the announcement that ends the
line, takes literal i (None = not kept: still a string, value unknown), and moves the
cursor to the start of the next line. Reaching the end of a line any other way while more
lines follow is a parse error, as is any control character, CR or LF inside a line.

Tokens (see `imap_proxy.wire.syntax`): `(` opens a `ParenList` (read with an explicit
stack, never recursion; deeper than `max_depth` raises `LimitExceeded("nesting")`), `"`
a `Quoted` string, `{`/`~{` a `LiteralString`; anything else is an `Atom` running to the
next space, parenthesis, quote or brace. A `[` inside an atom opens a section that runs to
its matching `]` and may hold spaces, parentheses and quoted strings, so
`BODY[HEADER.FIELDS (A B)]<0.10>` is one atom. In "code" mode (inside a response code
`[...]`), an unbalanced `]` ends the atom and the list of values.

The lexer is lenient where servers and clients are sloppy but meaning is clear (runs of
spaces, trailing spaces, a missing CRLF on the last line, unknown backslash escapes in
quoted strings are kept verbatim, 8-bit octets in atoms) and strict elsewhere. It raises
only `ParseError` or `LimitExceeded`.
"""

from __future__ import annotations

import re
from typing import Final

from imap_proxy.wire.errors import LimitExceeded, ParseError, Side
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import NIL, Atom, LiteralString, ParenList, Quoted, Value

DEFAULT_MAX_DEPTH: Final = 64

_SP: Final = 0x20
_OPEN: Final = ord("(")
_CLOSE: Final = ord(")")
_DQUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")
_LBRACE: Final = ord("{")
_TILDE: Final = ord("~")
_LBRACKET: Final = ord("[")
_RBRACKET: Final = ord("]")

# A run of atom octets that need no further thought (no brackets, no delimiters).
_PLAIN_ATOM_RUN: Final = re.compile(rb'[^\x00-\x20\x7f()"{\[\]]*')
# Inside a section: the next octet that changes state.
_SECTION_SPECIAL: Final = re.compile(rb'[\[\]"{\x00-\x1f\x7f]')
_ANNOUNCEMENT: Final = re.compile(rb"\{([0-9]{1,20})[+-]?\}")
_FORBIDDEN_IN_LINE: Final = re.compile(rb"[\x00\r\n]")


def strip_terminator(line: bytes) -> bytes:
    """A raw line without its CRLF (or bare LF); a line without one is returned whole."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


class Lexer:
    """A cursor over one message; see the module docstring."""

    def __init__(self, message: Message, side: Side, *, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        if not message.lines or len(message.lines) != len(message.literals) + 1:
            raise ParseError(side, "malformed message: lines and literals do not match")
        self.side = side
        self.max_depth = max_depth
        self._message = message
        self._index = 0
        self._line = self._load(0)
        self.pos = 0

    # --- cursor --------------------------------------------------------------------

    @property
    def line(self) -> bytes:
        """The current line, terminator stripped."""
        return self._line

    @property
    def on_last_line(self) -> bool:
        return self._index == len(self._message.lines) - 1

    def at_line_end(self) -> bool:
        return self.pos >= len(self._line)

    def at_end(self) -> bool:
        return self.pos >= len(self._line) and self.on_last_line

    def peek(self) -> int | None:
        """The octet under the cursor, None at the end of the line."""
        return self._line[self.pos] if self.pos < len(self._line) else None

    def skip_spaces(self) -> None:
        line, pos = self._line, self.pos
        while pos < len(line) and line[pos] == _SP:
            pos += 1
        self.pos = pos

    def expect_space(self) -> None:
        if self.peek() != _SP:
            raise self.error("expected a space")
        self.skip_spaces()

    def read_word(self) -> bytes:
        """Octets up to the next space or the end of the line (tags, command names)."""
        end = self._line.find(b" ", self.pos)
        if end < 0:
            end = len(self._line)
        word = self._line[self.pos : end]
        self.pos = end
        return word

    def rest_of_line(self) -> bytes:
        """The rest of the current line (response text); the cursor moves to its end."""
        rest = self._line[self.pos :]
        self.pos = len(self._line)
        return rest

    def expect_end(self) -> None:
        self.skip_spaces()
        if not self.at_end():
            raise self.error("unexpected data at the end of the message")

    def error(self, text: str) -> ParseError:
        return ParseError(self.side, f"{text} (line {self._index + 1}, offset {self.pos})")

    # --- values --------------------------------------------------------------------

    def read_values(self, *, in_code: bool = False) -> tuple[Value, ...]:
        """Every value up to the end of the message (or the `]` of a response code)."""
        values: list[Value] = []
        while True:
            self.skip_spaces()
            if self.at_line_end():
                if not self.on_last_line:
                    raise self.error("line ends without announcing a literal")
                return tuple(values)
            if in_code and self.peek() == _RBRACKET:
                return tuple(values)
            values.append(self.read_value(in_code=in_code))

    def read_value(self, *, in_code: bool = False) -> Value:
        """One value at the cursor (which must not be at the end of the line)."""
        octet = self.peek()
        if octet == _OPEN:
            return self._read_list(in_code)
        return self._read_scalar(in_code)

    def _read_scalar(self, in_code: bool) -> Value:
        octet = self.peek()
        if octet is None:
            raise self.error("expected a value")
        if octet == _DQUOTE:
            value, self.pos = self._scan_quoted(self.pos)
            return Quoted(value)
        if octet == _LBRACE or (
            octet == _TILDE and self._line[self.pos + 1 : self.pos + 2] == b"{"
        ):
            return self._read_literal()
        if octet in (_OPEN, _CLOSE):
            raise self.error("unexpected parenthesis")
        return self._read_atom(in_code)

    def _read_list(self, in_code: bool) -> ParenList:
        self.pos += 1  # the "(" under the cursor
        stack: list[list[Value]] = [[]]
        while True:
            self.skip_spaces()
            octet = self.peek()
            if octet is None:
                raise self.error("unterminated parenthesised list")
            if octet == _OPEN:
                if len(stack) >= self.max_depth:
                    raise LimitExceeded(
                        self.side, "nesting", f"lists nested deeper than {self.max_depth}"
                    )
                self.pos += 1
                stack.append([])
            elif octet == _CLOSE:
                self.pos += 1
                closed = ParenList(tuple(stack.pop()))
                if not stack:
                    return closed
                stack[-1].append(closed)
            else:
                stack[-1].append(self._read_scalar(in_code))

    def _read_atom(self, in_code: bool) -> Value:
        line, start = self._line, self.pos
        pos = start
        while True:
            pos = match_end(_PLAIN_ATOM_RUN, line, pos)
            if pos >= len(line):
                break
            octet = line[pos]
            if octet == _LBRACKET:
                pos = self._skip_section(pos)
            elif octet == _RBRACKET:
                if in_code:
                    break
                pos += 1
            elif octet < _SP or octet == 0x7F:
                self.pos = pos
                raise self.error(f"control octet 0x{octet:02x}")
            else:
                break
        self.pos = pos
        value = line[start:pos]
        if not value:
            raise self.error(f"unexpected {line[pos : pos + 1]!r}")
        if len(value) == 3 and value.upper() == b"NIL":
            return NIL
        return Atom(value)

    def _skip_section(self, pos: int) -> int:
        """From a `[`, the offset just past its matching `]`."""
        line, depth = self._line, 0
        while True:
            found = _SECTION_SPECIAL.search(line, pos)
            if found is None:
                self.pos = pos
                raise self.error("unterminated [ section")
            pos = found.start()
            octet = line[pos]
            if octet == _LBRACKET:
                depth += 1
            elif octet == _RBRACKET:
                depth -= 1
                if depth == 0:
                    return pos + 1
            elif octet == _DQUOTE:
                _, pos = self._scan_quoted(pos)
                continue
            elif octet == _LBRACE:
                self.pos = pos
                raise self.error("literals inside a [ section are not supported")
            else:
                self.pos = pos
                raise self.error(f"control octet 0x{octet:02x}")
            pos += 1

    def _scan_quoted(self, pos: int) -> tuple[bytes, int]:
        """From a `"`, the unescaped content and the offset just past the closing quote."""
        line = self._line
        out = bytearray()
        pos += 1
        quote = line.find(b'"', pos)
        while True:  # each find starts past the last one: linear in the line length
            if quote < 0:
                self.pos = pos
                raise self.error("unterminated quoted string")
            backslash = line.find(b"\\", pos, quote)
            if backslash < 0:
                out += line[pos:quote]
                return bytes(out), quote + 1
            out += line[pos:backslash]
            escaped = line[backslash + 1]  # exists: the closing quote comes later
            if escaped in (_DQUOTE, _BACKSLASH):
                out.append(escaped)
            else:  # not an RFC escape: keep both octets, as sloppy peers mean them
                out += line[backslash : backslash + 2]
            pos = backslash + 2
            if pos > quote:
                quote = line.find(b'"', pos)

    def _read_literal(self) -> LiteralString:
        binary = self._line[self.pos] == _TILDE
        start = self.pos + 1 if binary else self.pos
        found = _ANNOUNCEMENT.match(self._line, start)
        if found is None or found.end() != len(self._line):
            raise self.error("a literal announcement must end the line")
        if self.on_last_line:
            raise self.error("a literal is announced but no literal follows")
        size = int(found.group(1))
        data = self._message.literals[self._index]
        if data is not None and len(data) != size:
            raise self.error(f"literal of {len(data)} octets announced as {size}")
        self._index += 1
        self._line = self._load(self._index)
        self.pos = 0
        return LiteralString(data, binary)

    def _load(self, index: int) -> bytes:
        line = strip_terminator(self._message.lines[index])
        bad = _FORBIDDEN_IN_LINE.search(line)
        if bad is not None:
            raise ParseError(self.side, f"octet 0x{line[bad.start()]:02x} inside line {index + 1}")
        return line


def match_end(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    found = pattern.match(data, pos)
    return found.end() if found is not None else pos


def lex_values(
    message: Message, side: Side, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> tuple[Value, ...]:
    """Every value of a whole message (tests, and callers that want no structure)."""
    return Lexer(message, side, max_depth=max_depth).read_values()

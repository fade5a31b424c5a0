"""Special-folder names: which upstream folder has which role, and what the client calls it.

How this works: a role is a special-use attribute (`\\Trash`, `\\Sent`, ...; RFC 6154),
kept lowercase. Names are compared as *keys*: the raw (modified UTF-7) name is split at
the hierarchy delimiter, a leading personal-namespace `INBOX<delimiter>` is set aside,
and each part is decoded and case-folded. Names in rule data are Unicode and written with
`/` between levels, so the alias "[Gmail]/Trash" matches `[Gmail].Trash` on a server
whose delimiter is `.`, and "Deleted Items" matches `INBOX.Deleted Items`.

`FolderMap` holds one rule's data: the client's aliases per role (the first is the name
the client sees), upstream names that have a role where the server shows no attribute,
and folders the operator configured. `folders(view)` resolves each role to the upstream
folder: configured first, then the mailbox a LIST showed with the attribute, then (only
when the upstream has no SPECIAL-USE) the first existing mailbox named in
`upstream_names`; it is cached until the session learns more (`view.mailbox_version`).
`to_upstream(name)` maps a client name (an alias, or a child of one) to the upstream
name; `to_client(name)` maps an upstream name back, or says to hide it: an upstream
mailbox that carries the preferred alias's name but is not the role's folder would
otherwise show twice. A secondary alias that names another real upstream folder (a user's
own "Spam" next to the real "Junk") is *shadowed*: it means that folder, unmapped, and it
stays visible. Unknown roles map nothing: names pass through unchanged.

`FolderRoles` is the plain "upstream name -> attribute" table of the SPECIAL-USE
synthesis and XLIST actions, with the same key matching.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imap_proxy.wire.mutf7 import decode_mutf7, encode_mutf7

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

Key = tuple[str, ...]
_UNSELECTABLE = frozenset({"\\noselect", "\\nonexistent"})
_GUESS_DELIMITERS = (b"/", b".")


def decode_part(raw: bytes) -> str | None:
    """One name part as text: modified UTF-7, or UTF-8 from a UTF8=ACCEPT client."""
    try:
        return decode_mutf7(raw)
    except ValueError:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None


@dataclass(frozen=True, slots=True)
class SplitName:
    """`INBOX.Deleted Items.Sub` as prefix `INBOX.`, parts [`Deleted Items`, `Sub`]."""

    prefix: bytes
    parts: list[bytes]
    delimiter: bytes

    def key(self, count: int | None = None) -> Key | None:
        texts = [decode_part(part) for part in self.parts[:count]]
        if any(text is None for text in texts):
            return None
        return tuple(text.casefold() for text in texts if text is not None)


def split_name(name: bytes, delimiter: bytes) -> SplitName:
    prefix = b""
    head = b"INBOX" + delimiter
    if delimiter and name[: len(head)].upper() == head and len(name) > len(head):
        prefix, name = name[: len(head)], name[len(head) :]
    return SplitName(prefix, name.split(delimiter) if delimiter else [name], delimiter)


def text_key(text: str) -> Key:
    """The key of a name written in rule data ("[Gmail]/Trash")."""
    return tuple(part.casefold() for part in text.split("/"))


def encode_text(text: str, delimiter: bytes) -> bytes:
    """A rule-data name as the upstream would spell it: mUTF-7, `/` as its delimiter."""
    return delimiter.join(encode_mutf7(part) for part in text.split("/"))


def delimiters(view: SessionView) -> tuple[bytes, ...]:
    return (view.delimiter,) if view.delimiter else _GUESS_DELIMITERS


def is_inbox(name: bytes) -> bool:
    return name.upper() == b"INBOX"


class Verdict(enum.Enum):
    KEEP = "keep"
    RENAME = "rename"
    HIDE = "hide"


@dataclass(frozen=True, slots=True)
class Mapped:
    verdict: Verdict
    name: bytes = b""
    role: str = ""  # set when the name is the role's folder itself (not a child)


_KEEP = Mapped(Verdict.KEEP)


class FolderMap:
    def __init__(
        self,
        aliases: Mapping[str, Iterable[str]],
        upstream_names: Mapping[str, str],
        upstream_folders: Mapping[str, str],
    ) -> None:
        self.aliases: dict[str, list[Key]] = {}
        self.preferred: dict[str, str] = {}
        for role, names in aliases.items():
            listed = list(names)
            if listed:
                self.aliases[role.lower()] = [text_key(name) for name in listed]
                self.preferred[role.lower()] = listed[0]
        self.upstream_names = [
            (text_key(name), role.lower()) for name, role in upstream_names.items()
        ]
        self.configured = {
            role.lower(): name
            for role, name in upstream_folders.items()
            if role.lower() in self.aliases
        }
        self._wanted_keys = {key for key, _role in self.upstream_names} | {
            alias for keys in self.aliases.values() for alias in keys
        }
        # An index of what the session learnt, kept up to date from view.mailbox_changes.
        self._indexed = 0
        self._index_of: tuple[int, bytes] | None = None  # (epoch, delimiter) indexed with
        self._by_attribute: dict[str, bytes] = {}
        self._by_key: dict[Key, bytes] = {}
        self._cache: tuple[object, dict[str, bytes]] | None = None

    # --- which upstream folder has each role ------------------------------------------

    def _index(self, view: SessionView) -> None:
        """Take in the mailboxes learnt since the last call (all of them after a reset)."""
        delimiter = view.delimiter or b"/"
        if self._index_of != (view.mailbox_epoch, delimiter):
            self._index_of = (view.mailbox_epoch, delimiter)
            self._indexed = 0
            self._by_attribute.clear()
            self._by_key.clear()
        changes = view.mailbox_changes
        for name in changes[self._indexed :]:
            attributes = view.mailbox_attributes.get(name, frozenset())
            if attributes & _UNSELECTABLE:
                continue
            for role in self.aliases:
                if role in attributes:
                    self._by_attribute.setdefault(role, name)
            key = split_name(name, delimiter).key()
            if key is not None and key in self._wanted_keys:
                self._by_key.setdefault(key, name)
        self._indexed = len(changes)

    def folders(self, view: SessionView) -> dict[str, bytes]:
        """role -> upstream mailbox name (raw), for the roles this map has aliases for."""
        guess = not view.has_upstream("SPECIAL-USE")
        stamp = (view.mailbox_version, view.mailbox_epoch, view.delimiter, guess)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        self._index(view)
        delimiter = view.delimiter or b"/"
        found = {role: encode_text(name, delimiter) for role, name in self.configured.items()}
        for role, name in self._by_attribute.items():
            found.setdefault(role, name)
        if guess:
            for key, role in self.upstream_names:
                if role in self.aliases and role not in found and key in self._by_key:
                    found[role] = self._by_key[key]
        self._cache = (stamp, found)
        return found

    def unresolved_alias(self, name: bytes, view: SessionView) -> bool:
        """True if `name` is an alias of a role whose folder is not known yet."""
        known = self.folders(view)
        for delimiter in delimiters(view):
            key = split_name(name, delimiter).key()
            if key is None:
                continue
            for role, keys in self.aliases.items():
                if role not in known and any(key[: len(alias)] == alias for alias in keys):
                    return True
        return False

    # --- client names -> upstream names ---------------------------------------------

    def to_upstream(self, name: bytes, view: SessionView) -> Mapped:
        """RENAME with the upstream name (role set for the folder itself), or KEEP."""
        known = self.folders(view)
        if not known or is_inbox(name):
            return _KEEP
        for delimiter in delimiters(view):
            split = split_name(name, delimiter)
            for role, folder in known.items():
                for alias in self.aliases[role]:
                    if len(split.parts) < len(alias) or split.key(len(alias)) != alias:
                        continue
                    if self._shadowed(role, alias, folder):
                        return _KEEP
                    rest = split.parts[len(alias) :]
                    upstream_delimiter = view.delimiter or delimiter
                    target = upstream_delimiter.join([folder, *rest])
                    own = not rest or rest == [b""]
                    return Mapped(Verdict.RENAME, target, role if own else "")
        return _KEEP

    def _shadowed(self, role: str, alias: Key, folder: bytes) -> bool:
        """A secondary alias that names another real upstream folder means that folder."""
        if alias == self.aliases[role][0]:
            return False  # the name the client sees always means the role's folder
        existing = self._by_key.get(alias)
        return existing is not None and existing != folder

    # --- upstream names -> client names ---------------------------------------------

    def display(self, role: str, folder: bytes, delimiter: bytes) -> bytes:
        """The name the client sees for a role's folder: its preferred alias."""
        return split_name(folder, delimiter).prefix + encode_text(self.preferred[role], delimiter)

    def to_client(self, name: bytes, view: SessionView, delimiter: bytes | None) -> Mapped:
        """RENAME (the role's folder or a child of it), HIDE (an alias duplicate) or KEEP."""
        known = self.folders(view)
        if not known or is_inbox(name):
            return _KEEP
        delimiter = delimiter or view.delimiter or b"/"
        for role, folder in known.items():
            if name == folder or name.startswith(folder + delimiter):
                shown = self.display(role, folder, delimiter) + name[len(folder) :]
                own = name == folder
                return Mapped(Verdict.RENAME, shown, role if own else "")
        key = split_name(name, delimiter).key()
        if key is None:
            return _KEEP
        for role in known:
            preferred = self.aliases[role][0]
            if key[: len(preferred)] == preferred:
                return Mapped(Verdict.HIDE)
        return _KEEP


class FolderRoles:
    """Upstream folder name -> special-use attribute, matched by key."""

    def __init__(self, folders: Mapping[str, str]) -> None:
        self._by_key: dict[Key, str] = {}
        for name, attribute in folders.items():
            self._by_key.setdefault(text_key(name), attribute)

    def attribute(self, name: bytes, delimiter: bytes | None) -> str | None:
        for candidate in (delimiter,) if delimiter else _GUESS_DELIMITERS:
            key = split_name(name, candidate).key()
            if key is not None and key in self._by_key:
                return self._by_key[key]
        return None

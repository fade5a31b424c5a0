"""Special folders: name mapping, SPECIAL-USE synthesis and XLIST.

How this works:
* `MapSpecialFolders` rewrites every mailbox argument that is one of the client's names
  for a special folder ("Deleted Items", a child "Deleted Items/2024", the reference or
  pattern of LIST/LSUB/XLIST, both names of RENAME, the mailbox of APPEND, which reaches
  it as a command head so the message streams) into the upstream's real folder (see
  `quirks.foldermap`), in whatever form it came: atom, quoted or literal in, the encoder
  picks the form out. CREATE of an alias of a known folder is answered OK locally. In
  LIST/LSUB/XLIST replies the real folder shows under the client's preferred name, with
  the role's attribute added where the upstream lacks it, and an upstream mailbox with
  that preferred name is hidden (it would show twice); STATUS replies carry the name the
  client asked about. When a command names an alias whose folder is not known yet, the
  session is asked to learn the mailbox list first (`wants_mailbox_list`).
* `SynthesizeSpecialUse` adds the attribute of `folders` to LIST/LSUB replies of mailboxes
  that have none, advertises SPECIAL-USE, and turns RFC 6154's `LIST (SPECIAL-USE) ...`
  (selection: only special-use mailboxes) and `... RETURN (SPECIAL-USE)` into a plain LIST
  whose replies it annotates and, for the selection option, filters.
* `Xlist` advertises XLIST, sends XLIST upstream as LIST and answers with `* XLIST` lines
  carrying the special-use attributes (LIST's, or `folders`') under Gmail's names (\\Spam,
  \\AllMail, \\Starred for \\Junk, \\All, \\Flagged) and \\Inbox for INBOX.

Which command an untagged reply answers is the oldest client command in flight that
produces such replies (`view.client_commands`): servers answer in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import DROP, Action, Drop, LocalAnswer, Rewrite
from imap_proxy.quirks.actions.mailboxes import (
    MAILBOX_COMMANDS,
    SPECIAL_USE,
    _canonical,
    _with_attributes,
)
from imap_proxy.quirks.foldermap import FolderMap, FolderRoles, Verdict, is_inbox
from imap_proxy.quirks.model import (
    MapSpecialFoldersAction,
    SynthesizeSpecialUseAction,
    XlistAction,
)
from imap_proxy.wire.command import Command, mailbox_args
from imap_proxy.wire.encode import mailbox_value
from imap_proxy.wire.response import ListData, Response, StatusData
from imap_proxy.wire.syntax import ParenList, Value, is_atom, mailbox_bytes

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

LIST_VERBS = frozenset({"LIST", "LSUB", "XLIST"})
_REMEMBERED_MAX = 64  # tags remembered per action: a few are in flight at most


def answering(view: SessionView, verbs: frozenset[str]) -> tuple[bytes, str] | None:
    """The client command (tag, verb) an untagged reply of these verbs answers."""
    for tag, verb in view.client_commands():
        if verb in verbs:
            return tag, verb
    return None


def _remember(table: dict[bytes, bytes], tag: bytes, value: bytes, view: SessionView) -> None:
    if len(table) >= _REMEMBERED_MAX:
        running = {running_tag for running_tag, _ in view.client_commands()}
        for old in [old for old in table if old not in running]:
            del table[old]
        while len(table) >= _REMEMBERED_MAX:
            del table[next(iter(table))]
    table[tag] = value


def _mailbox_indices(command: Command) -> list[int]:
    if command.name == "XLIST":
        return [index for index in (0, 1) if index < len(command.args)]
    if command.name == "APPEND":
        return [0] if len(command.args) > 1 else []
    return mailbox_args(command)


def _names_at(value: Value) -> list[bytes | None]:
    if isinstance(value, ParenList):  # LIST-EXTENDED: a list of patterns
        return [mailbox_bytes(item) for item in value.items]
    return [mailbox_bytes(value)]


def _lists_everything(command: Command) -> bool:
    indices = _mailbox_indices(command)
    if len(indices) != 2:
        return False
    reference, pattern = (mailbox_bytes(command.args[index]) for index in indices)
    return reference == b"" and pattern == b"*"


def _role_attribute(role: str) -> str:
    return _canonical(role)


class MapSpecialFolders(Action):
    kind = "map_special_folders"
    commands = MAILBOX_COMMANDS | LIST_VERBS
    head_commands = frozenset({"APPEND"})
    responses = frozenset({"LIST", "LSUB", "XLIST", "STATUS"})

    def __init__(self, rule_id: str, spec: MapSpecialFoldersAction) -> None:
        super().__init__(rule_id)
        self.map = FolderMap(
            {str(role): names for role, names in spec.aliases.items()},
            spec.upstream_names,
            {str(role): name for role, name in spec.upstream_folders.items()},
        )
        self.learn_with_list = spec.learn_with_list
        self._learnt = False  # the mailbox list was asked for (by us, or by the client)
        self._full_lists: dict[bytes, bytes] = {}  # tags of the client's `LIST "" "*"`
        self._status_names: dict[bytes, bytes] = {}  # STATUS tag -> the client's name

    # --- commands ------------------------------------------------------------------

    def wants_mailbox_list(self, command: Command, view: SessionView) -> bool:
        if not self.learn_with_list or self._learnt or not view.authenticated:
            return False
        if self._full_lists:
            running = {tag for tag, _verb in view.client_commands()}
            if any(tag not in running for tag in self._full_lists):
                self._learnt = True  # the client's own full LIST has taught us
                return False
        for index in _mailbox_indices(command):
            for name in _names_at(command.args[index]):
                if name is not None and self.map.unresolved_alias(name, view):
                    self._learnt = True  # once a session: what LIST lacks, it lacks
                    return True
        return False

    def _mapped(self, value: Value, view: SessionView) -> tuple[Value, str | None]:
        """The value with its name mapped, and the role when it names a role's folder."""
        if isinstance(value, ParenList):
            items = [self._mapped(item, view)[0] for item in value.items]
            return ParenList(tuple(items)), None
        name = mailbox_bytes(value)
        if name is None:
            return value, None
        mapped = self.map.to_upstream(name, view)
        if mapped.verdict is not Verdict.RENAME or mapped.name == name:
            return value, mapped.role or None
        return mailbox_value(mapped.name), mapped.role or None

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        if command.name in ("LIST", "XLIST") and _lists_everything(command):
            _remember(self._full_lists, command.tag, b"", view)  # it teaches what ours would
        args = list(command.args)
        changed = False
        for index in _mailbox_indices(command):
            value, role = self._mapped(args[index], view)
            if command.name == "CREATE" and role:
                return LocalAnswer(b"", b"OK CREATE completed (the folder exists)")
            if value != args[index]:
                args[index] = value
                changed = True
        if command.name == "STATUS" and args:
            name = mailbox_bytes(command.args[0])
            if name is not None:
                _remember(self._status_names, command.tag, name, view)
        if not changed:
            return None
        return Rewrite(Command(command.tag, command.name, tuple(args)))

    # --- responses -----------------------------------------------------------------

    def on_response(self, response: Response, view: SessionView) -> Response | Drop | None:
        if isinstance(response, ListData):
            return self._list_reply(response, view)
        if isinstance(response, StatusData):
            return self._status_reply(response, view)
        return None

    def _list_reply(self, data: ListData, view: SessionView) -> ListData | Drop | None:
        mapped = self.map.to_client(data.mailbox, view, data.delimiter)
        if mapped.verdict is Verdict.HIDE:
            return DROP
        if mapped.verdict is Verdict.KEEP:
            return None
        renamed = ListData(data.kind, data.attributes, data.delimiter, mapped.name, data.extended)
        if mapped.role:
            return _with_attributes(renamed, [_role_attribute(mapped.role)]) or renamed
        return renamed

    def _status_reply(self, data: StatusData, view: SessionView) -> StatusData | None:
        mapped = self.map.to_client(data.mailbox, view, None)
        if mapped.verdict is not Verdict.RENAME:
            return None
        shown = mapped.name
        owner = answering(view, frozenset({"STATUS"}))
        asked = self._status_names.get(owner[0]) if owner else None
        if asked is not None:
            back = self.map.to_upstream(asked, view)
            if back.verdict is Verdict.RENAME and back.name == data.mailbox:
                shown = asked
        return StatusData(shown, data.items)


def _special(attributes: tuple[str, ...]) -> bool:
    return any(attribute.lower() in SPECIAL_USE for attribute in attributes)


def _annotated(data: ListData, roles: FolderRoles, view: SessionView) -> ListData:
    """`data` with the attribute `roles` gives its name, unless it has one already."""
    if _special(data.attributes):
        return data
    attribute = roles.attribute(data.mailbox, data.delimiter or view.delimiter)
    if attribute is None:
        return data
    return _with_attributes(data, [attribute]) or data


def _without_option(options: ParenList, name: bytes) -> ParenList | None:
    """The options less `name`, or None when `name` was not there."""
    kept = tuple(item for item in options.items if not is_atom(item, name))
    return None if len(kept) == len(options.items) else ParenList(kept)


class SynthesizeSpecialUse(Action):
    kind = "synthesize_special_use"
    commands = frozenset({"LIST"})
    responses = frozenset({"LIST", "LSUB"})

    def __init__(self, rule_id: str, spec: SynthesizeSpecialUseAction) -> None:
        super().__init__(rule_id)
        self.roles = FolderRoles(spec.folders)
        self._filtered: dict[bytes, bytes] = {}  # tags of `LIST (SPECIAL-USE)` commands

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        # Advertised after login only, once the upstream's full list is known.
        if not view.authenticated or any(cap.upper() == "SPECIAL-USE" for cap in caps):
            return caps
        return [*caps, "SPECIAL-USE"]

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        args = list(command.args)
        changed = False
        if args and isinstance(args[0], ParenList):
            selection = _without_option(args[0], b"SPECIAL-USE")
            if selection is not None:
                _remember(self._filtered, command.tag, b"", view)
                changed = True
                if selection.items:
                    args[0] = selection
                else:
                    del args[0]
        for index in range(len(args) - 1):
            if is_atom(args[index], b"RETURN") and isinstance(args[index + 1], ParenList):
                options = args[index + 1]
                assert isinstance(options, ParenList)
                returned = _without_option(options, b"SPECIAL-USE")
                if returned is not None:
                    changed = True
                    if returned.items:
                        args[index + 1] = returned
                    else:
                        del args[index : index + 2]
                break
        if not changed:
            return None
        return Rewrite(Command(command.tag, command.name, tuple(args)))

    def on_response(self, response: Response, view: SessionView) -> Response | Drop | None:
        if not isinstance(response, ListData):
            return None
        annotated = _annotated(response, self.roles, view)
        owner = answering(view, LIST_VERBS)
        if owner is not None and owner[0] in self._filtered and not _special(annotated.attributes):
            return DROP
        return annotated if annotated != response else None


# XLIST predates RFC 6154: Gmail named these three its own way, and XLIST clients expect it.
_GMAIL_NAMES = {"\\junk": "\\Spam", "\\all": "\\AllMail", "\\flagged": "\\Starred"}


class Xlist(Action):
    shared = True  # configuration only
    kind = "xlist"
    commands = frozenset({"XLIST"})
    responses = frozenset({"LIST"})

    def __init__(self, rule_id: str, spec: XlistAction) -> None:
        super().__init__(rule_id)
        self.roles = FolderRoles(spec.folders)

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        # Advertised after login only, once the upstream's full list is known.
        if not view.authenticated or any(cap.upper() == "XLIST" for cap in caps):
            return caps
        return [*caps, "XLIST"]

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        if view.has_upstream("XLIST"):
            return None
        return Rewrite(Command(command.tag, "LIST", command.args))

    def on_response(self, response: Response, view: SessionView) -> Response | Drop | None:
        if not isinstance(response, ListData) or response.kind != "LIST":
            return None
        owner = answering(view, LIST_VERBS)
        if owner is None or owner[1] != "XLIST":
            return None
        data = _annotated(response, self.roles, view)
        if is_inbox(data.mailbox):
            data = _with_attributes(data, ["\\Inbox"]) or data
        attributes = tuple(_GMAIL_NAMES.get(a.lower(), a) for a in data.attributes)
        return ListData("XLIST", attributes, data.delimiter, data.mailbox, data.extended)

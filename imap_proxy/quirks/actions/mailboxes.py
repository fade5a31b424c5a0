"""Actions on mailbox names and on LSUB: the Thunderbird and Outlook workarounds.

How this works:
* `StripTrailingSeparator` (Dovecot's tb-extra-mailbox-sep): Thunderbird may send
  "INBOX/foo/" where the server wants "INBOX/foo"; one trailing separator is removed from
  every mailbox argument. The separator is the upstream's, once a LIST response showed it.
* `LsubNoselect` (Dovecot's tb-lsub-flags): LSUB lines lack \\Noselect for folders that
  cannot be selected, so Thunderbird shows them as normal then fails; the attribute is
  added where a LIST response of this session showed \\Noselect or \\NonExistent.
* `LsubSpecialUse`: Outlook 2013 and later read special-use attributes from LSUB (Dovecot
  always sends them there "because Outlook 2013 does this"); they are copied from LIST
  responses of this session, or taken from the operator's `folders` map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, Rewrite
from imap_proxy.quirks.foldermap import FolderRoles
from imap_proxy.quirks.model import (
    LsubNoselectAction,
    LsubSpecialUseAction,
    StripTrailingSeparatorAction,
)
from imap_proxy.wire.command import Command, mailbox_args
from imap_proxy.wire.encode import mailbox_value
from imap_proxy.wire.response import ListData, Response
from imap_proxy.wire.syntax import mailbox_bytes

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

SPECIAL_USE = frozenset(
    {"\\all", "\\archive", "\\drafts", "\\flagged", "\\junk", "\\sent", "\\trash"}
)
MAILBOX_COMMANDS = frozenset(
    {
        "SELECT",
        "EXAMINE",
        "CREATE",
        "DELETE",
        "RENAME",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "STATUS",
        "COPY",
        "MOVE",
        "UID COPY",
        "UID MOVE",
    }
)


class StripTrailingSeparator(Action):
    shared = True  # configuration only
    kind = "strip_trailing_separator"
    commands = MAILBOX_COMMANDS
    responses = frozenset({"LIST"})  # observed only: it tells the upstream's separator

    def __init__(self, rule_id: str, spec: StripTrailingSeparatorAction) -> None:
        super().__init__(rule_id)
        self.separators = [s.encode() for s in spec.separators]

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        separators = [view.delimiter] if view.delimiter else self.separators
        args = list(command.args)
        changed = False
        for index in mailbox_args(command):
            name = mailbox_bytes(args[index])
            if name is None or len(name) < 2:
                continue
            for separator in separators:
                if name.endswith(separator) and not name.endswith(separator * 2):
                    args[index] = mailbox_value(name[: -len(separator)])
                    changed = True
                    break
        if not changed:
            return None
        return Rewrite(Command(command.tag, command.name, tuple(args)))


def _with_attributes(data: ListData, extra: list[str]) -> ListData | None:
    have = {a.lower() for a in data.attributes}
    added = [a for a in extra if a.lower() not in have]
    if not added:
        return None
    return ListData(
        data.kind, (*data.attributes, *added), data.delimiter, data.mailbox, data.extended
    )


class LsubNoselect(Action):
    shared = True  # configuration only
    kind = "lsub_noselect"
    responses = frozenset({"LIST", "LSUB"})

    def __init__(self, rule_id: str, spec: LsubNoselectAction) -> None:
        super().__init__(rule_id)

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        if not isinstance(response, ListData) or response.kind != "LSUB":
            return None
        known = view.mailbox_attributes.get(response.mailbox, frozenset())
        if known & {"\\noselect", "\\nonexistent"}:
            return _with_attributes(response, ["\\Noselect"])
        return None


class LsubSpecialUse(Action):
    shared = True  # configuration only
    kind = "lsub_special_use"
    responses = frozenset({"LIST", "LSUB"})

    def __init__(self, rule_id: str, spec: LsubSpecialUseAction) -> None:
        super().__init__(rule_id)
        self.folders = FolderRoles(spec.folders)  # matched as foldermap keys: INBOX., mUTF-7

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        if not isinstance(response, ListData) or response.kind != "LSUB":
            return None
        known = view.mailbox_attributes.get(response.mailbox, frozenset())
        extra = sorted(_canonical(a) for a in known & SPECIAL_USE)
        mapped = self.folders.attribute(response.mailbox, response.delimiter or view.delimiter)
        if mapped is not None:
            extra.append(mapped)
        return _with_attributes(response, extra)


def _canonical(attribute: str) -> str:
    return "\\" + attribute[1:].capitalize()

"""The action vocabulary: one class per action type of the rule file format.

How this works: `build_action(rule_id, spec)` turns a validated action spec (from
`quirks.model`) into an `Action` object holding that rule's per-session state. An action
declares the hooks it takes part in (`commands` it wants whole, untagged `responses` it
wants parsed) and overrides the matching methods of `Action`; the defaults change nothing.
Adding an action type means a model in `quirks.model` and a class registered here.
"""

from __future__ import annotations

from imap_proxy.quirks.actions.base import (
    DROP,
    Action,
    Drop,
    Emulate,
    EmulationAnswer,
    LocalAnswer,
    ReplaceCommand,
    Rewrite,
    Script,
    StepResult,
    UpstreamCommand,
)
from imap_proxy.quirks.actions.capabilities import AnswerId, ShapeCapabilities
from imap_proxy.quirks.actions.clients import ShedBackgroundLoad
from imap_proxy.quirks.actions.deletes import DeleteToTrash, ScopeExpunge
from imap_proxy.quirks.actions.folders import MapSpecialFolders, SynthesizeSpecialUse, Xlist
from imap_proxy.quirks.actions.idle import IdleKeepalive, IdlePoll, Reidle
from imap_proxy.quirks.actions.liststatus import EmulateListStatus
from imap_proxy.quirks.actions.mailboxes import (
    LsubNoselect,
    LsubSpecialUse,
    StripTrailingSeparator,
)
from imap_proxy.quirks.actions.move import EmulateMove
from imap_proxy.quirks.actions.robustness import (
    DropFetchModifier,
    EmptyPartialFetch,
    IgnoreEmptyLines,
    NormalizeBodyStructure,
    UntaggedStatusText,
)
from imap_proxy.quirks.actions.servergaps import AnswerEnable, AnswerNamespace, EmulateUnselect
from imap_proxy.quirks.actions.stubfetch import StubFetch
from imap_proxy.quirks.actions.untagged import HoldUntagged
from imap_proxy.quirks.actions.upstream import PrefixNumericTags, SendIdUpstream
from imap_proxy.quirks.actions.utf8 import Utf8Accept
from imap_proxy.quirks.model import (
    ActionSpec,
    AnswerEnableAction,
    AnswerIdAction,
    AnswerNamespaceAction,
    CapabilitiesAction,
    DeleteToTrashAction,
    DropFetchModifierAction,
    EmptyPartialFetchAction,
    EmulateUnselectAction,
    HoldUntaggedAction,
    IdleKeepaliveAction,
    IdlePollAction,
    IgnoreEmptyLinesAction,
    ListStatusAction,
    LsubNoselectAction,
    LsubSpecialUseAction,
    MapSpecialFoldersAction,
    MoveEmulationAction,
    NormalizeBodyStructureAction,
    PrefixNumericTagsAction,
    ReidleAction,
    ScopeExpungeAction,
    SendIdUpstreamAction,
    ShedBackgroundLoadAction,
    StripTrailingSeparatorAction,
    StubFetchAction,
    SynthesizeSpecialUseAction,
    UntaggedStatusTextAction,
    Utf8AcceptAction,
    XlistAction,
)

__all__ = [
    "DROP",
    "Action",
    "Drop",
    "Emulate",
    "EmulationAnswer",
    "LocalAnswer",
    "ReplaceCommand",
    "Rewrite",
    "Script",
    "StepResult",
    "UpstreamCommand",
    "build_action",
]


def build_action(rule_id: str, spec: ActionSpec) -> Action:
    match spec:
        case CapabilitiesAction():
            return ShapeCapabilities(rule_id, spec)
        case AnswerIdAction():
            return AnswerId(rule_id, spec)
        case StripTrailingSeparatorAction():
            return StripTrailingSeparator(rule_id, spec)
        case LsubNoselectAction():
            return LsubNoselect(rule_id, spec)
        case LsubSpecialUseAction():
            return LsubSpecialUse(rule_id, spec)
        case HoldUntaggedAction():
            return HoldUntagged(rule_id, spec)
        case MoveEmulationAction():
            return EmulateMove(rule_id, spec)
        case StubFetchAction():
            return StubFetch(rule_id, spec)
        case MapSpecialFoldersAction():
            return MapSpecialFolders(rule_id, spec)
        case SynthesizeSpecialUseAction():
            return SynthesizeSpecialUse(rule_id, spec)
        case XlistAction():
            return Xlist(rule_id, spec)
        case AnswerNamespaceAction():
            return AnswerNamespace(rule_id, spec)
        case AnswerEnableAction():
            return AnswerEnable(rule_id, spec)
        case EmulateUnselectAction():
            return EmulateUnselect(rule_id, spec)
        case IgnoreEmptyLinesAction():
            return IgnoreEmptyLines(rule_id, spec)
        case DropFetchModifierAction():
            return DropFetchModifier(rule_id, spec)
        case UntaggedStatusTextAction():
            return UntaggedStatusText(rule_id, spec)
        case EmptyPartialFetchAction():
            return EmptyPartialFetch(rule_id, spec)
        case NormalizeBodyStructureAction():
            return NormalizeBodyStructure(rule_id, spec)
        case ShedBackgroundLoadAction():
            return ShedBackgroundLoad(rule_id, spec)
        case SendIdUpstreamAction():
            return SendIdUpstream(rule_id, spec)
        case PrefixNumericTagsAction():
            return PrefixNumericTags(rule_id, spec)
        case IdleKeepaliveAction():
            return IdleKeepalive(rule_id, spec)
        case ReidleAction():
            return Reidle(rule_id, spec)
        case IdlePollAction():
            return IdlePoll(rule_id, spec)
        case DeleteToTrashAction():
            return DeleteToTrash(rule_id, spec)
        case ScopeExpungeAction():
            return ScopeExpunge(rule_id, spec)
        case ListStatusAction():
            return EmulateListStatus(rule_id, spec)
        case Utf8AcceptAction():
            return Utf8Accept(rule_id, spec)
    raise TypeError(f"no implementation for action {spec!r}")  # pragma: no cover

"""What some upstreams need from a client that the proxy supplies: an ID, tag shapes.

How this works:
* `SendIdUpstream` (Q20): NetEase/Coremail refuse SELECT ("Unsafe Login") unless the
  client sent ID after login. Once a login succeeds the session sends its own
  `ID (fields)` upstream with a proxy tag and consumes the answer (tagged and untagged):
  the client never sees it. The fields are the rule's, never empty (Q19).
* `PrefixNumericTags` (Q20): Coremail rejects purely numeric tags (libetpan and MailCore2
  switch to `C1`, `C2` when they see its greeting). A client tag of digits only is sent
  upstream as `prefix + tag` (`1` -> `A1`); the session maps the tagged response back, so
  the client sees its own tag. A tag already of that shape passes unchanged, and a
  numeric tag is not prefixed while a client command under the prefixed form is in
  flight (the answers could not be told apart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action
from imap_proxy.quirks.model import PrefixNumericTagsAction, SendIdUpstreamAction
from imap_proxy.wire.encode import encode_id_response

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


class SendIdUpstream(Action):
    shared = True  # configuration only
    kind = "send_id_upstream"

    def __init__(self, rule_id: str, spec: SendIdUpstreamAction) -> None:
        super().__init__(rule_id)
        reply = encode_id_response([(k.encode(), v.encode()) for k, v in spec.fields.items()])
        # `* ID (...)` and `ID (...)` share the list: take it from the encoded response.
        self.command = b"ID " + reply[len(b"* ID ") :].rstrip(b"\r\n")
        if b"\r\n" in self.command:  # the model allows printable ASCII only
            raise ValueError("ID fields must fit on one line")

    def after_login(self, view: SessionView) -> list[bytes]:
        return [self.command]


class PrefixNumericTags(Action):
    shared = True  # configuration only
    kind = "prefix_numeric_tags"
    maps_tags = True

    def __init__(self, rule_id: str, spec: PrefixNumericTagsAction) -> None:
        super().__init__(rule_id)
        self.prefix = spec.prefix.encode()

    def upstream_tag(self, tag: bytes) -> bytes | None:
        return self.prefix + tag if tag.isdigit() else None

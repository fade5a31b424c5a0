"""Who logs in: the user name from LOGIN or a SASL response, never the password.

How this works: the session keeps LOGIN commands (small) and the first SASL response in
memory only long enough to read the user name from them. PLAIN carries
`authzid NUL authcid NUL password`; LOGIN's first response is the name. The password is
never decoded into a value that outlives these functions, and nothing here logs.
"""

from __future__ import annotations

import base64
import binascii

from imap_proxy.wire.command import parse_command
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import astring_bytes


def login_user(message: Message) -> str | None:
    try:
        command = parse_command(message)
    except (ProtocolError, ValueError):
        return None
    if not command.args:
        return None
    user = astring_bytes(command.args[0])
    return None if user is None else user.decode("utf-8", "replace")


def sasl_user(mechanism: str, response: bytes) -> str | None:
    """The user a PLAIN or LOGIN response names; None for other mechanisms."""
    try:
        decoded = base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        return None
    if mechanism == "PLAIN":
        fields = decoded.split(b"\x00")
        if len(fields) != 3:
            return None
        name = fields[0] or fields[1]
    elif mechanism == "LOGIN":
        name = decoded
    else:
        return None
    return name.decode("utf-8", "replace") or None

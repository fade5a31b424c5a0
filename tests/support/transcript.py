"""Golden transcripts: C:/S: dialogues replayed through a sans-IO ProxySession.

How this works: a transcript is a text file of lines, each with a prefix saying who sends
it and whether the proxy passes it on:

    S: …   the upstream sends it; the proxy must relay it to the client unchanged
    C: …   the client sends it; the proxy must relay it upstream unchanged
    s: …   the upstream sends it; the proxy consumes it (answer to the proxy's own command)
    c: …   the client sends it; the proxy handles it and sends nothing upstream
    >c: …  the proxy itself sends this to the client
    >s: …  the proxy itself sends this upstream
    !: …   a directive (`upstream-closed`, `session {…}`: see imap_proxy/wire/transcript.py)
    # …    a comment; blank lines are ignored

The format, its one parser and the replay are the package's (imap_proxy.wire.transcript,
imap_proxy.session.replay); this module adds the chunkers and the default rules. Every
line ends in CRLF on the wire, literal data included (so a literal's content is
written as the lines that follow its announcement). `replay()` feeds the inputs in order,
each split by a chunking strategy (whole, byte at a time, random), and returns what the
proxy sent each way plus its observations; `expected_outputs()` is what it must have sent.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from imap_proxy.quirks.model import load_rules
from imap_proxy.session.replay import Chunker, ReplayResult, whole
from imap_proxy.session.replay import replay as replay_transcript
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.transcript import TraceLine, client_bytes, parse, upstream_bytes

__all__ = ["Chunker", "ReplayResult", "Step", "parse", "whole"]

SHIPPED_RULES = load_rules()  # transcripts replay with the rules a default proxy runs
TRANSCRIPTS = Path(__file__).parent.parent / "transcripts"

Step = TraceLine  # one entry of a transcript (imap_proxy.wire.transcript)


def load(name: str) -> list[Step]:
    return parse((TRANSCRIPTS / name).read_text(encoding="utf-8"))


def expected_outputs(steps: list[Step]) -> tuple[bytes, bytes]:
    """(bytes the client must receive, bytes the upstream must receive)."""
    return client_bytes(steps), upstream_bytes(steps)


def byte_at_a_time(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def random_chunks(seed: int) -> Chunker:
    rng = random.Random(seed)

    def chunks(data: bytes) -> Iterator[bytes]:
        i = 0
        while i < len(data):
            n = rng.randint(1, 17)
            yield data[i : i + n]
            i += n

    return chunks


def replay(
    steps: list[Step], chunker: Chunker = whole, settings: SessionSettings | None = None
) -> ReplayResult:
    """The package's replay (imap_proxy.session.replay), by default with the shipped rules."""
    return replay_transcript(
        steps, settings=settings or SessionSettings(rules=SHIPPED_RULES), chunker=chunker
    )


CHUNKERS_FOR_UNIT: list[Chunker] = [whole, byte_at_a_time, random_chunks(1)]

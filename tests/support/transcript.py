"""Golden transcripts: C:/S: dialogues replayed through a sans-IO ProxySession.

How this works: a transcript is a text file of lines, each with a prefix saying who sends
it and whether the proxy passes it on:

    S: …   the upstream sends it; the proxy must relay it to the client unchanged
    C: …   the client sends it; the proxy must relay it upstream unchanged
    s: …   the upstream sends it; the proxy consumes it (answer to the proxy's own command)
    c: …   the client sends it; the proxy handles it and sends nothing upstream
    >c: …  the proxy itself sends this to the client
    >s: …  the proxy itself sends this upstream
    # …    a comment; blank lines are ignored

Every line ends in CRLF on the wire, literal data included (so a literal's content is
written as the lines that follow its announcement). `replay()` feeds the inputs in order,
each split by a chunking strategy (whole, byte at a time, random), and returns what the
proxy sent each way plus its observations; `expected_outputs()` is what it must have sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from imap_proxy.quirks.model import load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings

T = TypeVar("T")
SHIPPED_RULES = load_rules()  # transcripts replay with the rules a default proxy runs
TRANSCRIPTS = Path(__file__).parent.parent / "transcripts"

Chunker = Callable[[bytes], Iterator[bytes]]


@dataclass(frozen=True)
class Step:
    prefix: str
    data: bytes


@dataclass
class ReplayResult:
    to_client: bytes = b""
    to_upstream: bytes = b""
    events: list[ev.Event] = field(default_factory=list)
    session: ProxySession | None = None

    def of_type(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]


def load(name: str) -> list[Step]:
    return parse((TRANSCRIPTS / name).read_text(encoding="utf-8"))


def parse(text: str) -> list[Step]:
    steps = []
    for raw in text.splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        prefix, sep, rest = raw.partition(":")
        if not sep or prefix not in ("S", "C", "s", "c", ">c", ">s"):
            raise ValueError(f"bad transcript line: {raw!r}")
        if rest.startswith(" "):
            rest = rest[1:]
        steps.append(Step(prefix, rest.encode("utf-8") + b"\r\n"))
    return steps


def expected_outputs(steps: list[Step]) -> tuple[bytes, bytes]:
    """(bytes the client must receive, bytes the upstream must receive)."""
    client = b"".join(s.data for s in steps if s.prefix in ("S", ">c"))
    upstream = b"".join(s.data for s in steps if s.prefix in ("C", ">s"))
    return client, upstream


def whole(data: bytes) -> Iterator[bytes]:
    yield data


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
    session = ProxySession(settings or SessionSettings(rules=SHIPPED_RULES))
    result = ReplayResult(session=session)

    def take(events: list[ev.Event]) -> None:
        for event in events:
            if isinstance(event, ev.SendToClient):
                result.to_client += event.data
            elif isinstance(event, ev.SendToUpstream):
                result.to_upstream += event.data
            result.events.append(event)

    for step in steps:
        if step.prefix in ("S", "s"):
            for chunk in chunker(step.data):
                take(session.receive_from_upstream(chunk))
        elif step.prefix in ("C", "c"):
            for chunk in chunker(step.data):
                take(session.receive_from_client(chunk))
    return result


CHUNKERS_FOR_UNIT: list[Chunker] = [whole, byte_at_a_time, random_chunks(1)]

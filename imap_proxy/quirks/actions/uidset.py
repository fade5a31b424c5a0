"""UID sets as sorted ranges: parse, format, test membership, never expand.

How this works: a `UidSet` is a tuple of disjoint, sorted, inclusive (low, high) ranges.
`UidSet.parse(b"1:3,7")` reads an explicit set (no `*`, as RFC 4315 guarantees for
COPYUID), `UidSet.of(numbers)` compacts numbers (UID SEARCH results) into ranges, and
`bytes(uid_set)` writes the shortest form back. A range like `1:4294967295` stays two
numbers: nothing here is proportional to the size of a range, and membership is a binary
search, so a MOVE of many scattered UIDs stays linear.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

_EXPLICIT_SET = re.compile(rb"^[0-9]+(:[0-9]+)?(,[0-9]+(:[0-9]+)?)*$")
# RFC 3501 sequence-set, plus RFC 5182's `$` (the saved search result).
SEQUENCE_SET = re.compile(rb"^(\$|([0-9]+|\*)(:([0-9]+|\*))?(,([0-9]+|\*)(:([0-9]+|\*))?)*)$")
MAX_UID = 4_294_967_295


@dataclass(frozen=True, slots=True)
class UidSet:
    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: bytes) -> UidSet | None:
        """An explicit set (`1:3,7`), or None if it is not one (has `*`, `0`, garbage)."""
        if not _EXPLICIT_SET.match(text):
            return None
        pairs: list[tuple[int, int]] = []
        for part in text.split(b","):
            low, _, high = part.partition(b":")
            a, b = int(low), int(high or low)
            if not 0 < a <= MAX_UID or not 0 < b <= MAX_UID:
                return None
            pairs.append((min(a, b), max(a, b)))
        return cls._merged(pairs)

    @classmethod
    def of(cls, numbers: Iterable[int]) -> UidSet:
        return cls._merged((n, n) for n in numbers)

    @classmethod
    def _merged(cls, pairs: Iterable[tuple[int, int]]) -> UidSet:
        merged: list[tuple[int, int]] = []
        for low, high in sorted(pairs):
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
            else:
                merged.append((low, high))
        return cls(tuple(merged))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        index = bisect.bisect_right(self.ranges, (uid, MAX_UID + 1)) - 1  # last low <= uid
        return index >= 0 and self.ranges[index][1] >= uid

    def __bytes__(self) -> bytes:
        return b",".join(
            b"%d" % low if low == high else b"%d:%d" % (low, high) for low, high in self.ranges
        )

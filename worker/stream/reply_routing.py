"""Where an answer may go: the reply topic an event asks for, and the ones known to exist.

A question may ask for its answer on another topic (`reply_to`, or the `reply-to` header), which
is allowed only when the topic matches one of the configured patterns and is none of the
worker's own input or dead-letter topics (`ReplyRouting`). Delivery asks the broker about a
reply topic before its first send and keeps those found to exist in `KnownTopics`, least
recently used first, at most `REPLY_TOPICS_KNOWN`; one that falls out is forgotten by the
producer too, so what the worker keeps for reply topics is bounded however many distinct ones
events name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from fnmatch import fnmatchcase

from .records import IncomingMessage, header

__all__ = ["REPLY_TOPICS_KNOWN", "REPLY_TO_HEADER", "KnownTopics", "ReplyRouting"]

REPLY_TO_HEADER = "reply-to"
# Most reply topics remembered as existing. Any producer can name a new reply topic within the
# allowed patterns, so what the worker keeps for them needs a bound. The producer's metadata of
# each costs memory (about 2 KB traced, 9 KB resident at 4 partitions), and each topic it starts
# tracking makes it fetch and decode, on the event loop, the metadata of all it tracks: loop
# stalls of 45-120 ms at 100 tracked, 105-135 ms at 250 and about 1 s at 1,000 on 2 cores
# (docs/delivery.md). One that falls out costs that again when an event names it next.
REPLY_TOPICS_KNOWN = 100


class KnownTopics:
    """Topic names, least recently used first, at most `capacity` of them."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._names: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def touch(self, name: str) -> bool:
        """Marks `name` used now; False when it is not known."""
        if name not in self._names:
            return False
        self._names.move_to_end(name)
        return True

    def add(self, name: str) -> list[str]:
        """Knows `name`, used now; returns the names that fell out to make room for it."""
        self._names[name] = None
        self._names.move_to_end(name)
        evicted = []
        while len(self._names) > self.capacity:
            evicted.append(self._names.popitem(last=False)[0])
        return evicted

    def discard(self, name: str) -> None:
        self._names.pop(name, None)


class ReplyRouting:
    """Which topics a question may name for its answer: comma-separated glob patterns, less the
    `reserved` topics (the worker's own input and dead-letter topics), whatever the patterns say:
    an answer written there would be read back as a question, or pass for a dead letter."""

    def __init__(self, patterns: str | None, reserved: Iterable[str] = ()) -> None:
        self.patterns = [
            pattern.strip() for pattern in (patterns or "").split(",") if pattern.strip()
        ]
        self.reserved = frozenset(reserved)

    def requested(self, message: IncomingMessage, reply_to: str | None) -> str | None:
        """The topic the event asks its answer to go to: its `reply_to`, else the header."""
        return reply_to or header(message, REPLY_TO_HEADER)

    def allowed(self, topic: str) -> bool:
        if topic in self.reserved:
            return False
        return any(fnmatchcase(topic, pattern) for pattern in self.patterns)

"""OffsetTracker: acknowledgements in offset order, the in-flight limit, no offset going back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from worker.errors import OffsetOrderError, WorkerError
from worker.stream.offsets import OffsetTracker


@dataclass(frozen=True)
class FakeMessage:
    tp: tuple[str, int]
    offset: int


@dataclass(eq=False)
class FakeEvent:
    message: FakeMessage
    acks: list[tuple[tuple[str, int], int]] = field(default_factory=list)

    def ack(self) -> bool:
        self.acks.append((self.message.tp, self.message.offset))
        return True


def events(acks: list[tuple[tuple[str, int], int]], tp: tuple[str, int], *offsets: int) -> list:
    return [FakeEvent(FakeMessage(tp, offset), acks) for offset in offsets]


A = ("questions", 0)
B = ("questions", 1)


async def test_acknowledges_each_partition_in_offset_order() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    a = [tracker.track(event) for event in events(acks, A, 5, 6, 7)]
    b = [tracker.track(event) for event in events(acks, B, 3, 4)]
    await tracker.complete(a[2])
    await tracker.complete(b[1])
    assert acks == [] and tracker.count == 5
    await tracker.complete(a[0])
    assert acks == [(A, 5)]
    await tracker.complete(b[0])
    assert acks == [(A, 5), (B, 3), (B, 4)]
    await tracker.complete(a[1])
    assert acks == [(A, 5), (B, 3), (B, 4), (A, 6), (A, 7)]
    assert tracker.count == 0


async def test_in_flight_limit_waits_until_an_event_is_acknowledged() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=2)
    first, second = (tracker.track(event) for event in events(acks, A, 0, 1))
    waiting = asyncio.ensure_future(tracker.wait_for_room())
    await asyncio.sleep(0)
    # The second delivered first acknowledges nothing: the first still holds the partition.
    await tracker.complete(second)
    await asyncio.sleep(0)
    assert not waiting.done()
    await tracker.complete(first)
    await asyncio.wait_for(waiting, 1.0)
    assert tracker.count == 0


async def test_room_is_immediate_under_the_limit() -> None:
    tracker = OffsetTracker(limit=2)
    tracker.track(events([], A, 0)[0])
    await asyncio.wait_for(tracker.wait_for_room(), 1.0)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OffsetTracker(limit=0)


@pytest.mark.parametrize("offset", [9, 10])
async def test_refuses_an_offset_at_or_below_one_acknowledged(offset: int) -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    await tracker.complete(tracker.track(events(acks, A, 10)[0]))
    late = tracker.track(events(acks, A, offset)[0])
    with pytest.raises(OffsetOrderError, match=f"offset {offset} .* after offset 10") as caught:
        await tracker.complete(late)
    assert isinstance(caught.value, WorkerError) and caught.value.code is None
    assert acks == [(A, 10)]
    # Another partition is not held up by it.
    await tracker.complete(tracker.track(events(acks, B, 0)[0]))
    assert acks == [(A, 10), (B, 0)]


async def test_the_next_offset_up_is_accepted() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    await tracker.complete(tracker.track(events(acks, A, 10)[0]))
    await tracker.complete(tracker.track(events(acks, A, 11)[0]))
    assert acks == [(A, 10), (A, 11)]


async def test_a_revoked_partition_may_start_again_from_its_committed_offset() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    for event in events(acks, A, 10, 11):
        await tracker.complete(tracker.track(event))
    await tracker.complete(tracker.track(events(acks, B, 4)[0]))
    tracker.forget([A])
    # Read again from offset 10 (the last commit did not go through) after it came back.
    await tracker.complete(tracker.track(events(acks, A, 10)[0]))
    assert acks[-1] == (A, 10)
    # B was not revoked: its record stands.
    with pytest.raises(OffsetOrderError):
        await tracker.complete(tracker.track(events(acks, B, 4)[0]))

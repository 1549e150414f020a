"""OffsetTracker: acknowledgements in offset order, the limits on events held, no offset going
back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def test_in_flight_limit_waits_until_an_event_is_answered() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=2)
    first, second = (tracker.track(event) for event in events(acks, A, 0, 1))
    waiting = asyncio.ensure_future(tracker.wait_for_room())
    await asyncio.sleep(0)
    assert not waiting.done()
    # The second answered first acknowledges nothing (the first still holds the partition), but
    # it is no longer being answered: there is room to read another.
    await tracker.complete(second)
    await asyncio.wait_for(waiting, 1.0)
    assert acks == [] and tracker.count == 2 and tracker.answering == 1
    await tracker.complete(first)
    assert acks == [(A, 0), (A, 1)] and tracker.count == 0


class Switches:
    """Records the tracker's pauses and resumes, and checks they alternate per partition."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, int]]] = []
        self.paused: set[tuple[str, int]] = set()

    def pause(self, tp: object) -> None:
        assert tp not in self.paused
        self.paused.add(tp)  # type: ignore[arg-type]
        self.calls.append(("pause", tp))  # type: ignore[arg-type]

    def resume(self, tp: object) -> None:
        self.paused.remove(tp)  # type: ignore[arg-type]
        self.calls.append(("resume", tp))  # type: ignore[arg-type]


async def test_a_partition_holding_the_limit_is_paused_alone_until_its_oldest_is_answered() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    switches = Switches()
    tracker = OffsetTracker(limit=3, pause=switches.pause, resume=switches.resume)
    head, *behind = (tracker.track(event) for event in events(acks, A, 0, 1))
    other = tracker.track(events(acks, B, 0)[0])
    # Just under the limit: nothing paused.
    for tracked in behind:
        await tracker.complete(tracked)
    assert switches.calls == [] and tracker.paused == frozenset()
    # At the limit: that partition alone, though only its head is still being answered.
    behind.append(tracker.track(events(acks, A, 2)[0]))
    assert switches.calls == [("pause", A)] and tracker.paused == {A}
    await tracker.complete(behind[-1])
    await tracker.complete(other)
    assert switches.paused == {A} and acks == [(B, 0)]
    await asyncio.wait_for(tracker.wait_for_room(), 1.0)
    await tracker.complete(head)
    assert switches.calls == [("pause", A), ("resume", A)] and tracker.paused == frozenset()
    assert acks == [(B, 0), (A, 0), (A, 1), (A, 2)]


async def test_a_revoked_partition_forgets_its_pause() -> None:
    switches = Switches()
    tracker = OffsetTracker(limit=1, pause=switches.pause, resume=switches.resume)
    tracker.track(events([], A, 0)[0])
    assert tracker.paused == {A}
    tracker.forget([A])
    assert tracker.paused == frozenset()


async def test_an_event_completed_twice_is_refused() -> None:
    tracker = OffsetTracker(limit=2)
    tracked = tracker.track(events([], A, 0)[0])
    await tracker.complete(tracked)
    with pytest.raises(OffsetOrderError, match="completed twice"):
        await tracker.complete(tracked)
    assert tracker.answering == 0 and tracker.count == 0


@given(
    st.integers(1, 6),
    st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 10**6)), max_size=80),
)
@settings(max_examples=200, deadline=None)
def test_holds_and_pauses_follow_the_limits_in_any_order(
    limit: int, steps: list[tuple[bool, int, int]]
) -> None:
    """Any interleaving of reads and answers on three partitions: acknowledgements go out in
    offset order, a partition is paused exactly while it holds `limit` or more, and once
    everything is answered all is acknowledged and nothing stays paused."""

    async def run() -> None:
        acks: list[tuple[tuple[str, int], int]] = []
        switches = Switches()
        tracker = OffsetTracker(limit=limit, pause=switches.pause, resume=switches.resume)
        held: dict[tuple[str, int], list] = {}
        next_offset: dict[tuple[str, int], int] = {}
        for read, partition, pick in steps:
            tp = ("questions", partition)
            open_ = [t for t in held.get(tp, []) if not t.done]
            if read or not open_:
                offset = next_offset.get(tp, 0)
                next_offset[tp] = offset + 1
                held.setdefault(tp, []).append(tracker.track(events(acks, tp, offset)[0]))
            else:
                await tracker.complete(open_[pick % len(open_)])
            unacked = {
                tp: [t for t in tracked if (tp, t.event.message.offset) not in acks]
                for tp, tracked in held.items()
            }
            assert tracker.count == sum(map(len, unacked.values()))
            assert tracker.answering == sum(not t.done for ts in held.values() for t in ts)
            assert switches.paused == set(tracker.paused)
            for tp, tracked in unacked.items():
                assert (tp in tracker.paused) == (len(tracked) >= limit)
                if tp in tracker.paused:
                    assert not tracked[0].done
        for tracked in [t for ts in held.values() for t in ts if not t.done]:
            await tracker.complete(tracked)
        assert tracker.count == 0 and tracker.paused == frozenset()
        for tp, count in next_offset.items():
            assert [offset for ack_tp, offset in acks if ack_tp == tp] == list(range(count))

    asyncio.run(run())


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

"""OffsetTracker: acknowledgements in offset order, the limits on events held, no offset going
back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import OffsetOrderError, WorkerError
from worker.stream.offsets import OffsetTracker, Tracked


# Not tests.support.fake_stream's FakeMessage: OffsetTracker reads only a message's tp and offset.
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


class Begun(list[Tracked]):
    """The events the tracker began, in order: what the worker would start answering."""

    def __call__(self, tracked: Tracked) -> None:
        self.append(tracked)


def track(tracker: OffsetTracker, event: FakeEvent, begun: Begun | None = None) -> Tracked:
    return tracker.track(event, begun if begun is not None else Begun())


A = ("questions", 0)
B = ("questions", 1)


async def test_acknowledges_each_partition_in_offset_order() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    a = [track(tracker, event) for event in events(acks, A, 5, 6, 7)]
    b = [track(tracker, event) for event in events(acks, B, 3, 4)]
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


async def test_events_beyond_a_partitions_share_wait_until_one_of_its_own_is_answered() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    switches = Switches()
    begun = Begun()
    tracker = OffsetTracker(
        limit=4, pause=switches.pause, resume=switches.resume, partitions=lambda: 2
    )
    assert tracker.share() == 2
    a = [track(tracker, event, begun) for event in events(acks, A, 0, 1, 2, 3)]
    # A's third and fourth wait, and A is paused; B, quiet so far, starts at once.
    assert begun == a[:2] and tracker.parked == 2 and switches.paused == {A}
    b = track(tracker, events(acks, B, 0)[0], begun)
    assert begun[-1] is b and tracker.answering == 3
    # B's answer starts none of A's: A's share is A's alone.
    await tracker.complete(b)
    assert tracker.parked == 2 and acks == [(B, 0)]
    await tracker.complete(a[1])
    assert begun[3] is a[2] and tracker.parked == 1 and switches.paused == {A}
    await tracker.complete(a[0])
    assert begun[4] is a[3] and tracker.parked == 0 and switches.paused == set()
    assert acks == [(B, 0), (A, 0), (A, 1)]
    for tracked in a[2:]:
        await tracker.complete(tracked)
    assert tracker.count == tracker.answering == 0
    assert switches.calls == [("pause", A), ("resume", A)]


@pytest.mark.parametrize(("limit", "partitions", "share"), [(256, 12, 21), (8, 2, 4), (4, 5, 1)])
def test_the_share_is_the_limit_over_the_partitions_and_never_zero(
    limit: int, partitions: int, share: int
) -> None:
    assert OffsetTracker(limit, partitions=lambda: partitions).share() == share


async def test_a_parked_event_cannot_be_completed() -> None:
    tracker = OffsetTracker(limit=1)
    track(tracker, events([], A, 0)[0])
    parked = track(tracker, events([], A, 1)[0])
    with pytest.raises(OffsetOrderError, match="before it started"):
        await tracker.complete(parked)


async def test_a_revoked_partition_drops_its_parked_events() -> None:
    begun = Begun()
    tracker = OffsetTracker(limit=1)
    running = track(tracker, events([], A, 0)[0], begun)
    track(tracker, events([], A, 1)[0], begun)
    tracker.forget([A])
    assert tracker.parked == 0 and tracker.count == 1
    # What was running still completes; nothing parked starts after it.
    await tracker.complete(running)
    assert begun == [running] and tracker.count == 0


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
    head, *behind = (track(tracker, event) for event in events(acks, A, 0, 1))
    other = track(tracker, events(acks, B, 0)[0])
    # Just under the limit: nothing paused.
    for tracked in behind:
        await tracker.complete(tracked)
    assert switches.calls == [] and tracker.paused == frozenset()
    # At the limit: that partition alone, though only its head is still being answered.
    behind.append(track(tracker, events(acks, A, 2)[0]))
    assert switches.calls == [("pause", A)] and tracker.paused == {A}
    await tracker.complete(behind[-1])
    await tracker.complete(other)
    assert switches.paused == {A} and acks == [(B, 0)]
    await tracker.complete(head)
    assert switches.calls == [("pause", A), ("resume", A)] and tracker.paused == frozenset()
    assert acks == [(B, 0), (A, 0), (A, 1), (A, 2)]


async def test_a_revoked_partition_forgets_its_pause() -> None:
    switches = Switches()
    tracker = OffsetTracker(limit=1, pause=switches.pause, resume=switches.resume)
    track(tracker, events([], A, 0)[0])
    assert tracker.paused == {A}
    tracker.forget([A])
    assert tracker.paused == frozenset()


async def test_an_event_completed_twice_is_refused() -> None:
    tracker = OffsetTracker(limit=2)
    tracked = track(tracker, events([], A, 0)[0])
    await tracker.complete(tracked)
    with pytest.raises(OffsetOrderError, match="completed twice"):
        await tracker.complete(tracked)
    assert tracker.answering == 0 and tracker.count == 0


@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 10**6)), max_size=80),
)
@settings(max_examples=300, deadline=None)
def test_shares_holds_and_pauses_follow_the_limits_in_any_order(
    limit: int, partitions: int, steps: list[tuple[bool, int, int]]
) -> None:
    """Any interleaving of reads and answers on three partitions: no partition has more than its
    share being answered, its events begin in offset order and wait only while its share is
    full, acknowledgements go out in offset order, a partition is paused exactly while it has
    events waiting or holds `limit` or more, and once everything is answered all is acknowledged
    and nothing stays paused or waiting."""

    async def run() -> None:
        acks: list[tuple[tuple[str, int], int]] = []
        switches = Switches()
        tracker = OffsetTracker(
            limit=limit,
            pause=switches.pause,
            resume=switches.resume,
            partitions=lambda: partitions,
        )
        share = max(1, limit // partitions)
        begun: dict[tuple[str, int], Begun] = {}
        held: dict[tuple[str, int], list[Tracked]] = {}
        next_offset: dict[tuple[str, int], int] = {}

        def check() -> None:
            unacked = {
                tp: [t for t in tracked if (tp, t.event.message.offset) not in acks]
                for tp, tracked in held.items()
            }
            assert tracker.count == sum(map(len, unacked.values()))
            assert switches.paused == set(tracker.paused)
            for tp, tracked in held.items():
                running = [t for t in begun[tp] if not t.done]
                waiting = [t for t in tracked if not t.started]
                assert len(running) <= share
                assert begun[tp] == tracked[: len(begun[tp])]
                assert not waiting or len(running) == share
                pending = len(unacked[tp])
                assert (tp in tracker.paused) == (bool(waiting) or pending >= limit)
            assert tracker.answering == sum(not t.done for b in begun.values() for t in b)

        for read, partition, pick in steps:
            tp = ("questions", partition)
            running = [t for t in begun.get(tp, []) if not t.done]
            if read or not running:
                offset = next_offset.get(tp, 0)
                next_offset[tp] = offset + 1
                event = events(acks, tp, offset)[0]
                held.setdefault(tp, []).append(track(tracker, event, begun.setdefault(tp, Begun())))
            else:
                await tracker.complete(running[pick % len(running)])
            check()
        while running := [t for b in begun.values() for t in b if not t.done]:
            await tracker.complete(running[0])
            check()
        assert tracker.count == tracker.parked == 0 and tracker.paused == frozenset()
        for tp, count in next_offset.items():
            assert [offset for ack_tp, offset in acks if ack_tp == tp] == list(range(count))

    asyncio.run(run())


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OffsetTracker(limit=0)


@pytest.mark.parametrize("offset", [9, 10])
async def test_refuses_an_offset_at_or_below_one_acknowledged(offset: int) -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    await tracker.complete(track(tracker, events(acks, A, 10)[0]))
    late = track(tracker, events(acks, A, offset)[0])
    with pytest.raises(OffsetOrderError, match=f"offset {offset} .* after offset 10") as caught:
        await tracker.complete(late)
    assert isinstance(caught.value, WorkerError) and caught.value.code is None
    assert acks == [(A, 10)]
    # Another partition is not held up by it.
    await tracker.complete(track(tracker, events(acks, B, 0)[0]))
    assert acks == [(A, 10), (B, 0)]


async def test_the_next_offset_up_is_accepted() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    await tracker.complete(track(tracker, events(acks, A, 10)[0]))
    await tracker.complete(track(tracker, events(acks, A, 11)[0]))
    assert acks == [(A, 10), (A, 11)]


async def test_a_revoked_partition_may_start_again_from_its_committed_offset() -> None:
    acks: list[tuple[tuple[str, int], int]] = []
    tracker = OffsetTracker(limit=10)
    for event in events(acks, A, 10, 11):
        await tracker.complete(track(tracker, event))
    await tracker.complete(track(tracker, events(acks, B, 4)[0]))
    tracker.forget([A])
    # Read again from offset 10 (the last commit did not go through) after it came back.
    await tracker.complete(track(tracker, events(acks, A, 10)[0]))
    assert acks[-1] == (A, 10)
    # B was not revoked: its record stands.
    with pytest.raises(OffsetOrderError):
        await tracker.complete(track(tracker, events(acks, B, 4)[0]))

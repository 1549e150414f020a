"""Header keys that are not UTF-8: read per record in every codec, screened into dead letters."""

from __future__ import annotations

import json

import pytest
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fake_stream import FakeMessage, FakeTopics
from tests.support.records import CODECS, batch
from worker.errors import ErrorCode
from worker.stream.delivery import Delivery
from worker.stream.header_keys import (
    LenientMemoryRecords,
    readable_header_key,
    undecodable_header_keys,
)
from worker.stream.outgoing import Outgoing, OutgoingRecords
from worker.stream.pipeline import EventPipeline
from worker.stream.records import ReadAt, message_headers

BAD_KEY = b"trace\xff\xfe-id"


def read_all(data: bytes, records_class: type = LenientMemoryRecords) -> list:
    """The records as aiokafka's fetcher yields them from one fetch response."""
    partition = PartitionRecords(
        TopicPartition("t", 0), records_class(data), [], 0, None, None, True, 0
    )
    return list(partition)


@pytest.mark.parametrize("compression", list(CODECS))
def test_a_bad_header_key_is_read_with_the_records_around_it(compression: str) -> None:
    records = [
        (b"k0", b"before", [(b"ok", b"1")]),
        (b"k1", b"poison", [(b"ok", b"2"), (BAD_KEY, b"v")]),
        (None, b"after", []),
    ]
    data = batch(records, compression)
    # aiokafka on its own stops at the record, and with it the whole fetch.
    with pytest.raises(UnicodeDecodeError):
        read_all(data, MemoryRecords)
    read = read_all(data + batch([(b"k3", b"next", [])], compression, 3))
    assert [record.value for record in read] == [b"before", b"poison", b"after", b"next"]
    assert [record.offset for record in read] == [0, 1, 2, 3]
    assert [record.key for record in read] == [b"k0", b"k1", None, b"k3"]
    poisoned = read[1].headers
    assert poisoned[0] == ("ok", b"2")
    assert undecodable_header_keys(poisoned) == [BAD_KEY]
    assert readable_header_key(poisoned[1][0]) == "trace\\xff\\xfe-id"
    assert undecodable_header_keys(read[0].headers) == []


header_keys = st.one_of(st.text(min_size=8).map(str.encode), st.binary(min_size=8, max_size=40))
record_strategy = st.tuples(
    st.one_of(st.none(), st.binary(max_size=40)),
    st.binary(max_size=200),
    st.lists(st.tuples(header_keys, st.binary(max_size=20)), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(record_strategy, min_size=1, max_size=6), st.sampled_from(list(CODECS)))
def test_every_record_comes_back_as_sent_whatever_its_header_keys(
    records: list, compression: str
) -> None:
    read = read_all(batch(records, compression))
    assert [(record.key, record.value) for record in read] == [(k, v) for k, v, _ in records]
    for record, (_, _, headers) in zip(read, records, strict=True):
        keys = [key.encode("utf-8", "surrogateescape") for key, _ in record.headers]
        assert keys == [key for key, _ in headers]
        assert [value for _, value in record.headers] == [value for _, value in headers]
        bad = [key for key, _ in headers if not _is_utf8(key)]
        assert undecodable_header_keys(record.headers) == bad
        for key, _ in record.headers:
            # What is echoed and logged always encodes, and says which bytes were bad.
            readable_header_key(key).encode("utf-8")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def test_the_pipeline_dead_letters_a_bad_key_and_passes_the_rest() -> None:
    async def respond(message: object, read: ReadAt) -> Outgoing:
        return Outgoing("answers", b"answer", read.wall)

    topics = FakeTopics()
    pipeline = EventPipeline(
        {"questions": respond}, OutgoingRecords("dead-letters", 1_000), Delivery(topics), "group"
    )
    good = FakeMessage(b"{}", key=None, headers=[("traceparent", b"00-x")])
    assert (await pipeline.process(good, ReadAt(5.0, 0.0))).topic == "answers"
    bad_key = BAD_KEY.decode("utf-8", "surrogateescape")
    outgoing = await pipeline.process(
        FakeMessage(b"{}", key=None, headers=[("ok", b""), (bad_key, b"v")]), ReadAt(5.0, 0.0)
    )
    assert [sent.topic for sent in topics.sent] == ["answers", "dead-letters"]
    assert outgoing.dead_letter_reason is ErrorCode.INVALID_EVENT
    assert outgoing.event_time == 1_700_000_000.0
    reason = json.loads(outgoing.value)["error"]["message"]
    assert repr(BAD_KEY) in reason and "not UTF-8" in reason
    # Echoed on the outgoing record in a form the producer can encode.
    assert message_headers(FakeMessage(b"{}", key=None, headers=[(bad_key, b"v")])) == [
        ("trace\\xff\\xfe-id", b"v")
    ]

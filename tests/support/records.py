"""Raw Kafka record batches that clients refuse to build: header keys that are not UTF-8.

Producers encode header keys as UTF-8, so a batch with other bytes there is built with a
same-length placeholder key, patched, optionally compressed, and given a fresh CRC; `produce_raw`
sends such a batch to a partition as it is, in a ProduceRequest of its own.
"""

from __future__ import annotations

import struct

from aiokafka import codec
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_COMPRESS = {
    1: codec.gzip_encode,
    2: codec.snappy_encode,
    3: codec.lz4_encode,
    4: codec.zstd_encode,
}
_ATTRIBUTES_AT, _CRC_AT, _RECORDS_AT = 21, 17, 61

Record = tuple[bytes | None, bytes, list[tuple[bytes, bytes]]]
"""(key, value, headers) with header keys as raw bytes."""


def batch(records: list[Record], compression: str = "none", base_offset: int = 0) -> bytes:
    """A v2 batch of `records` (offsets from `base_offset`), compressed with `compression`."""
    placeholders: dict[str, bytes] = {}
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 10_000_000)
    for offset, (key, value, headers) in enumerate(records):
        texts = []
        for index, (raw_key, header_value) in enumerate(headers):
            try:
                text = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                # Unique, the same length, and found nowhere else in the batch.
                mark = f"~{offset:04d}{index:03d}".encode()
                text = (mark + b"~" * len(raw_key))[: len(raw_key)].decode()
                assert len(raw_key) >= len(mark), "a bad key must be 8 bytes or longer"
                placeholders[text] = raw_key
            texts.append((text, header_value))
        builder.append(offset, timestamp=None, key=key, value=value, headers=texts)
    raw = bytearray(builder.build())
    body = bytes(raw[_RECORDS_AT:])
    for text, raw_key in placeholders.items():
        assert body.count(text.encode()) == 1
        body = body.replace(text.encode(), raw_key)
    compressed = CODECS[compression]
    if compressed:
        body = _COMPRESS[compressed](body)
        (attributes,) = struct.unpack_from(">h", raw, _ATTRIBUTES_AT)
        struct.pack_into(">h", raw, _ATTRIBUTES_AT, attributes | compressed)
    raw = raw[:_RECORDS_AT] + body
    struct.pack_into(">q", raw, 0, base_offset)
    struct.pack_into(">i", raw, 8, len(raw) - 12)
    struct.pack_into(">I", raw, _CRC_AT, calc_crc32c(bytes(raw[_ATTRIBUTES_AT:])))
    return bytes(raw)


async def produce_raw(bootstrap: str, topic: str, partition: int, data: bytes) -> None:
    """Appends the batch `data` to the partition; raises the broker's error if it refuses."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, data)])])
        response = await client.send(leader, request)
        for _, partitions in response.topics:
            for _, error_code, *_ in partitions:
                if error_code:
                    raise for_code(error_code)(f"producing to {topic}[{partition}]")
    finally:
        await client.close()

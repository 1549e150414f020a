"""Header keys that are not UTF-8 reach the worker as one record's bad input, not a stopped fetch.

Kafka header keys are bytes on the wire; aiokafka decodes them as strict UTF-8 while it parses a
fetched batch (in its compiled record reader), so one record whose header key is not UTF-8 raised
UnicodeDecodeError inside faust's fetcher and stopped consumption on every partition.
`faust_private.install_lenient_header_keys()` puts `LenientMemoryRecords` where aiokafka's fetcher
builds its record sets: batches are read by aiokafka as before, and only when that raises
UnicodeDecodeError is the rest of the batch read again by `_read_batch` below, which decodes header
keys with `surrogateescape`. That replacement is lossless and unambiguous: strict UTF-8 never
decodes to a lone surrogate (U+DC80..U+DCFF), so a key holding one is exactly a key that was not
UTF-8.

Such keys cannot be sent (the producer encodes keys as UTF-8) nor logged or written as JSON
as they are; `readable_header_key` gives the backslash-escaped form every outgoing record and
log uses, and `pipeline.EventPipeline` turns the record into an `invalid_event` dead
letter naming the key before any handler sees it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiokafka import codec
from aiokafka.record.default_records import DefaultRecord
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

__all__ = [
    "LenientMemoryRecords",
    "readable_header_key",
    "undecodable_header_keys",
]

# Record batch v2 (KIP-98): offsets of the header fields read here, and the header's length.
_LENGTH_AT, _MAGIC_AT, _ATTRIBUTES_AT = 8, 16, 21
_FIRST_TIMESTAMP_AT, _MAX_TIMESTAMP_AT, _RECORDS_AT = 27, 35, 61
_CODEC_MASK, _LOG_APPEND_TIME = 0x07, 0x08
_DECOMPRESS: dict[int, Callable[[bytes], bytes]] = {
    1: codec.gzip_decode,
    2: codec.snappy_decode,
    3: codec.lz4_decode,
    4: codec.zstd_decode,
}


class LenientMemoryRecords:
    """aiokafka's MemoryRecords for one fetch response, its v2 batches read as `_LenientBatch`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._records = MemoryRecords(data)
        self._position = 0

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None:
            return None
        # Every batch, legacy or v2, starts with its offset (8 bytes) and the length of the rest
        # (4 bytes); aiokafka hands them out in order, so this walks in step with it.
        start = self._position
        (length,) = struct.unpack_from(">i", self._data, start + _LENGTH_AT)
        self._position = start + _LENGTH_AT + 4 + length
        if self._data[start + _MAGIC_AT] < 2:
            return batch  # message formats 0 and 1 have no headers
        return _LenientBatch(batch, self._data[start : self._position])


class _LenientBatch:
    """One v2 batch as aiokafka reads it, until a header key is not UTF-8; then `_read_batch`."""

    def __init__(self, batch: Any, raw: bytes) -> None:
        self._batch = batch
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:
        # aiokafka reads a control batch's marker with next(); control records have no headers.
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        last_offset = -1
        try:
            for record in self._batch:
                last_offset = record.offset
                yield record
        except UnicodeDecodeError:
            for record in _read_batch(self._raw):
                if record.offset > last_offset:
                    yield record


def _read_batch(raw: bytes) -> Iterator[DefaultRecord]:
    """The records of a v2 batch, header keys decoded with `surrogateescape`.

    Only ever reached for a batch aiokafka itself has validated (CRC, codec) and begun to read.
    """
    (base_offset,) = struct.unpack_from(">q", raw, 0)
    (attributes,) = struct.unpack_from(">h", raw, _ATTRIBUTES_AT)
    (first_timestamp,) = struct.unpack_from(">q", raw, _FIRST_TIMESTAMP_AT)
    (max_timestamp,) = struct.unpack_from(">q", raw, _MAX_TIMESTAMP_AT)
    (count,) = struct.unpack_from(">i", raw, _RECORDS_AT - 4)
    body = raw[_RECORDS_AT:]
    decompress = _DECOMPRESS.get(attributes & _CODEC_MASK)
    buffer = bytearray(decompress(bytes(body)) if decompress else body)
    log_append_time = bool(attributes & _LOG_APPEND_TIME)
    pos = 0
    for _ in range(count):
        length, pos = decode_varint(buffer, pos)
        end = pos + length
        pos += 1  # record attributes: unused by Kafka so far
        timestamp_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _bytes_at(buffer, pos)
        value, pos = _bytes_at(buffer, pos)
        header_count, pos = decode_varint(buffer, pos)
        headers = []
        for _ in range(header_count):
            raw_key, pos = _bytes_at(buffer, pos)
            header_value, pos = _bytes_at(buffer, pos)
            headers.append(((raw_key or b"").decode("utf-8", "surrogateescape"), header_value))
        yield DefaultRecord(
            base_offset + offset_delta,
            max_timestamp if log_append_time else first_timestamp + timestamp_delta,
            1 if log_append_time else 0,
            key,
            value,
            headers,
        )
        pos = end


def _bytes_at(buffer: bytearray, pos: int) -> tuple[bytes | None, int]:
    """A varint length and that many bytes (None for length -1), and the position after them."""
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    return bytes(buffer[pos : pos + length]), pos + length


def _has_surrogates(key: str) -> bool:
    if key.isascii():
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def undecodable_header_keys(headers: Iterable[tuple[str, object]]) -> list[bytes]:
    """The header keys, as the bytes that came on the wire, that were not UTF-8."""
    return [key.encode("utf-8", "surrogateescape") for key, _ in headers if _has_surrogates(key)]


def readable_header_key(key: str) -> str:
    """`key` itself when it came as UTF-8; else its bytes with the bad ones as `\\xNN`."""
    if not _has_surrogates(key):
        return key
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

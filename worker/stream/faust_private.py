"""Every use the worker makes of faust's and aiokafka's private API, with why it needs it.

Each bend below names what it touches, why the worker needs it, and what breaks if a faust or
aiokafka upgrade changes it; `tests/test_faust_private.py` fails, naming the bend, when what it
relies on is gone or changed.

- INVALID_RECORD (`InvalidRecordError`): adds Kafka's error 87 to `aiokafka.errors.kafka_errors`,
  where aiokafka looks up a response's error code. aiokafka 0.14 has no class for it and would
  report it as UnknownError (errno -1), losing the code: `delivery.judge` tells a record the
  broker refused by that code, resends it alone and makes it an `answer_refused` dead letter
  only when it is refused alone. A later aiokafka with its own class for 87 keeps it. If the
  table moves or is renamed, an answer refused as INVALID_RECORD is an UnknownError again, which
  no event gets past: the worker stops with a DeliveryError instead of dead-lettering it.
"""

from __future__ import annotations

from aiokafka.errors import BrokerResponseError, kafka_errors

__all__ = ["InvalidRecordError"]


class InvalidRecordError(BrokerResponseError):
    """Kafka's INVALID_RECORD: the broker refused a record it validated (a compacted topic's
    record without a key, a broker-side schema check)."""

    errno = 87
    message = "INVALID_RECORD"
    description = "This record has failed the validation on broker and hence been rejected."


# Where aiokafka looks up a response's error code; a later aiokafka with its own class keeps it.
kafka_errors.setdefault(InvalidRecordError.errno, InvalidRecordError)

"""What each of the worker's uses of faust's and aiokafka's private API relies on
(`worker.stream.faust_private`): each test names its bend, and fails when an upgrade of faust or
aiokafka removes or changes what that bend needs. No broker is involved."""

from __future__ import annotations

from aiokafka.errors import for_code

from worker.stream.faust_private import InvalidRecordError


def test_invalid_record_bend_aiokafka_reports_error_87_by_its_own_class() -> None:
    # Without the registration it would be UnknownError, errno -1: the code would be lost.
    assert for_code(87) is InvalidRecordError, "INVALID_RECORD bend: error 87 is not registered"
    assert InvalidRecordError().errno == 87 and not InvalidRecordError.retriable

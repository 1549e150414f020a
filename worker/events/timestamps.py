"""Instants as events write them (RFC 3339) and as the worker counts them (epoch milliseconds)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from ..errors import ErrorCode, EventError
from .codec import shown

_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
# RFC 3339 section 5.6: T and Z may be lower case, a time zone is required, seconds may be 60.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def created_at_ms(created_at: str) -> int:
    """An event's `created_at` in epoch milliseconds, or EventError saying what to fix."""
    problem = 'must be an RFC 3339 date-time with a time zone, such as "2024-05-01T12:00:00Z"'
    match = _RFC3339.fullmatch(created_at)
    if match is None:
        raise EventError(
            ErrorCode.INVALID_CREATED_AT, f'"created_at" {problem}, got {shown(created_at)}'
        )
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10)
    offset = timedelta(0)
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise EventError(
                ErrorCode.INVALID_CREATED_AT,
                f'"created_at" has a time zone offset out of range, got {shown(created_at)}',
            )
        offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
        offset = -offset if sign == "-" else offset
    # A leap second (23:59:60) is the instant after 23:59:59, as in epoch time.
    leap = second == 60
    try:
        instant = datetime(
            year, month, day, hour, minute, 59 if leap else second, tzinfo=timezone(offset)
        )
    except ValueError as error:
        raise EventError(
            ErrorCode.INVALID_CREATED_AT,
            f'"created_at" is not a real date-time ({error}), got {shown(created_at)}',
        ) from None
    milliseconds = int((fraction or "0")[:3].ljust(3, "0"))
    return (instant - _EPOCH_UTC) // _MILLISECOND + milliseconds + (1000 if leap else 0)


def timestamp(epoch_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds."""
    return (_EPOCH + epoch_ms * _MILLISECOND).isoformat(timespec="milliseconds") + "Z"

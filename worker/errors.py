"""Every error the worker raises on purpose, under one root, and the codes of dead letters.

    WorkerError(code, message)
    ├── EventError        one event cannot be answered; `code` goes into its dead letter
    ├── OffsetOrderError  an acknowledged offset went backwards: the worker must stop
    ├── DeliveryError     a record no event can get past (a configured topic refusing writes)
    ├── InputLostError    a topic the worker reads was deleted or cut short under it
    └── SetupError        what a command was given or needs cannot be used (no code)
        ├── ConfigError       a setting
        ├── ModelFolderError  a model folder
        ├── InputFileError    a question file for `answer` or `eval`
        ├── QuestionSetError  a question-set file
        ├── ExportError       a checkpoint to export
        ├── HubError          a Hub id that cannot be downloaded (hub.py)
        ├── OnnxSourceError   an ONNX model that cannot be prepared (onnx_source.py)
        │   └── OnnxInterfaceError  its graph does not fit the engine (the weights may)
        ├── TokenizerBuildError  vocabulary files a tokenizer cannot be built from
        ├── ExportCheckFailed    an export whose logits differ from its source's
        ├── BrokerError       the embedded broker
        └── BenchError        a benchmark run

The command line catches `WorkerError` alone. `ErrorCode` is the closed set of dead-letter codes:
schemas/dead-letter.schema.json lists the same values as its `error.code` enum (a test keeps them
equal), and the dead-letter metric's `reason` label takes no other value.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why an event went to the dead-letter topic; the value is what consumers read."""

    # Reading the event.
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"
    INVALID_CREATED_AT = "invalid_created_at"
    EMPTY_QUESTION = "empty_question"
    QUESTION_TOO_LARGE = "question_too_large"
    CONTEXT_TOO_LARGE = "context_too_large"
    TEXT_TOO_LARGE = "text_too_large"
    # The engine refusing the texts (offline callers may pass what the schema would not).
    INVALID_QUESTION = "invalid_question"
    INVALID_CONTEXT = "invalid_context"
    EMPTY_CONTEXT = "empty_context"
    QUESTION_TOO_LONG = "question_too_long"
    TOO_MANY_WINDOWS = "too_many_windows"
    TOKENIZATION_FAILED = "tokenization_failed"
    # Routing and tagging.
    INVALID_REPLY_TOPIC = "invalid_reply_topic"
    REPLY_TOPIC_UNKNOWN = "reply_topic_unknown"
    REPLY_TOPIC_UNAUTHORIZED = "reply_topic_unauthorized"
    REPLY_TOPIC_NOT_ALLOWED = "reply_topic_not_allowed"
    MISSING_QUESTION_SET = "missing_question_set"
    UNKNOWN_QUESTION_SET = "unknown_question_set"
    # Answering and delivering.
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INFERENCE_FAILED = "inference_failed"
    ANSWER_TOO_LARGE = "answer_too_large"
    ANSWER_REFUSED = "answer_refused"
    # Anything else raised on one event's way: the handling failed, not the event; the message
    # carries the exception's type and text.
    INTERNAL_ERROR = "internal_error"


class WorkerError(Exception):
    """The root: `code` is the dead-letter code for errors about one event, else None."""

    def __init__(self, code: ErrorCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventError(WorkerError):
    """An event (or offline question) that cannot be answered; the message says what to fix."""

    code: ErrorCode

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)


class OffsetOrderError(WorkerError):
    """An offset acknowledged at or below one already acknowledged on its partition.

    Committing it would move the group's position backwards, or it means an event is being
    acknowledged twice; either way the worker's bookkeeping is wrong and it must not go on.
    """

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class DeliveryError(WorkerError):
    """A record that can never be delivered and for which no dead letter can stand in.

    The answers, tags or dead-letter topic refuses writes for good, or refused a dead letter:
    every later event would meet the same, so the worker stops; the message names the setting.
    """

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class InputLostError(WorkerError):
    """A topic the worker reads was deleted, or a partition's log ends below its committed offset.

    The group's committed positions no longer describe that log: read on, they would skip the
    first records of a topic recreated under the name. The worker stops and says how to reset the
    group's offsets; it cannot tell which records it would skip.
    """

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class SetupError(WorkerError):
    """Something a command was given, or needs, cannot be used; the message names it."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class ConfigError(SetupError):
    """A setting has a value the worker cannot use."""


class ModelFolderError(SetupError):
    """A model folder is missing, incomplete, or does not match its manifest."""


class InputFileError(SetupError):
    """A question file that cannot be read; the message names the file, the place and the fix."""


class QuestionSetError(SetupError):
    """A question-set file that cannot be used; the message points at the problem."""


class ExportError(SetupError):
    """The checkpoint cannot be exported; the message says what to do about it."""


class BrokerError(SetupError):
    """The embedded broker could not be found, started or used."""


class BenchError(SetupError):
    """The benchmark could not run to the end; the message says what failed and where to look."""

"""Every error the worker raises on purpose, under one root, and the codes of dead letters.

    WorkerError(code, message)
    ├── EventError        one event cannot be answered; `code` goes into its dead letter
    │   └── DeadlineExceeded  its deadline passed, or would have, before it was answered
    ├── OffsetOrderError  [stops] an acknowledged offset went backwards
    ├── DeliveryError     [stops] a record no event can get past (a topic refusing writes)
    ├── InputLostError    [stops] a topic the worker reads was deleted or cut short under it
    ├── HubUnreachable    [retriable] the Hub cannot be asked now; the Hub cache may stand in
    └── SetupError        what a command was given or needs cannot be used (no code)
        ├── ConfigError       a setting
        ├── ModelFolderError  a model folder
        ├── InputFileError    a question file for `answer` or `eval`
        ├── QuestionSetError  a question-set file
        ├── ExportError       a checkpoint to export
        ├── HubError          a Hub id that cannot be downloaded
        ├── OnnxSourceError   an ONNX model that cannot be prepared
        │   └── OnnxInterfaceError  its graph does not fit the engine (the weights may)
        ├── TokenizerBuildError  vocabulary files a tokenizer cannot be built from
        ├── ExportCheckFailed    an export whose logits differ from its source's
        ├── BrokerError       the embedded broker
        └── BenchError        a benchmark run

What becomes of an error is a property of its class, so that no caller keeps a list of its own:
- `stops_worker` (marked [stops]): every later record would meet the error too, so the streaming
  worker stops instead of making it one event's dead letter. False for every other class: an
  error while handling an event ends as that event's dead letter.
- `retriable` (marked [retriable]): trying the same thing again later, with nothing changed,
  may succeed. False for every other class: something has to change first (the event, a setting,
  a file), or a retry meets the same answer. Where a class is raised for both kinds of cause,
  the comment on its `retriable` says which way it goes and why.
Both are False on the root and True only on the classes marked; a test keeps the marks, the
tree and the classes equal.

The command line catches `WorkerError` alone. `ErrorCode` is the closed set of dead-letter codes:
schemas/dead-letter.schema.json lists the same values as its `error.code` enum (a test keeps them
equal), and the dead-letter metric's `reason` label takes no other value.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


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

    stops_worker: ClassVar[bool] = False
    retriable: ClassVar[bool] = False

    def __init__(self, code: ErrorCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventError(WorkerError):
    """An event (or offline question) that cannot be answered; the message says what to fix."""

    code: ErrorCode

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)


class DeadlineExceeded(EventError):
    """Before all of the question's windows started inference, its deadline passed, or would
    have passed before even one of its windows alone could finish.

    The message says at which step the deadline passed (the dead letter puts the time the event
    allowed before it); the code is always `deadline_exceeded`. Not retriable: the deadline is
    the event's own, and later is only further past it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.DEADLINE_EXCEEDED, message)


class OffsetOrderError(WorkerError):
    """An offset acknowledged at or below one already acknowledged on its partition.

    Committing it would move the group's position backwards, or it means an event is being
    acknowledged twice; either way the worker's bookkeeping is wrong and it must not go on.
    """

    stops_worker = True

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class DeliveryError(WorkerError):
    """A record that can never be delivered and for which no dead letter can stand in.

    The answers, tags or dead-letter topic refuses writes for good, or refused a dead letter:
    every later event would meet the same, so the worker stops; the message names the setting.
    """

    stops_worker = True

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class InputLostError(WorkerError):
    """A topic the worker reads was deleted, or a partition's log ends below its committed offset.

    The group's committed positions no longer describe that log: read on, they would skip the
    first records of a topic recreated under the name. The worker stops and says how to reset the
    group's offsets; it cannot tell which records it would skip.
    """

    stops_worker = True

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class HubUnreachable(WorkerError):
    """The Hub could not be asked (offline mode, no network, a server error); the cache may do.

    Not a SetupError, nor a HubError: whoever asks the Hub catches it to fall back to a commit
    the cache knows, and a handler for what cannot be used must not take it for one.
    """

    retriable = True

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


class HubError(SetupError):
    """The checkpoint could not be had from the Hub; the message says how to pass a folder."""

    # Mostly the Hub saying no (no such repository or revision, a gated one), which a retry meets
    # again. A download cut short by the network is a HubError too and might succeed later, but
    # the fix its message gives is a folder prepared elsewhere; a Hub that cannot be asked at all
    # is HubUnreachable.
    retriable = False


class OnnxSourceError(SetupError):
    """The folder's ONNX model or tokenizer files cannot serve the worker; the message says why."""


class OnnxInterfaceError(OnnxSourceError):
    """The ONNX file itself does not fit the engine; the checkpoint's weights may still do."""


class TokenizerBuildError(SetupError):
    """The folder's tokenizer files cannot be turned into tokenizer.json; the message says why."""


class ExportCheckFailed(SetupError):
    """A prepared ONNX file's logits differ from its source's beyond the tolerance."""


class BrokerError(SetupError):
    """The embedded broker could not be found, started or used."""

    # Also raised when it did not start in time; its message's fix is a longer start_timeout,
    # not the same start again.
    retriable = False


class BenchError(SetupError):
    """The benchmark could not run to the end; the message says what failed and where to look."""

    # Also raised when the worker under test timed out or exited; what its message points at
    # (the worker's log) is to be read before running the same again.
    retriable = False

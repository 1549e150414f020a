"""The worker's one configuration object.

Every setting is a field of `Settings`. Each can come from a command-line flag (`--top-k`), an
environment variable (`QA_TOP_K`) or its default, in that order of precedence. The table in
docs/configuration.md is generated from these fields (`python -m worker.config --markdown`),
and a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ENV_PREFIX = "QA_"
# The weights a model folder may hold (its manifest names them), and what `--precision` picks.
Precision = Literal["fp32", "int8", "int8-static"]
# Most windows one question may make: with a question of ordinary length, 100,000 characters of
# any text make fewer (Korean, the most tokens a character in BERT's vocabulary, about 1,200).
DEFAULT_MAX_WINDOWS = 4096
# Above this, an event's nesting would come near the recursion limits of the JSON encoder and
# the standard library's decoder (1,000 frames, some taken by the stack that calls them).
MAX_JSON_DEPTH_LIMIT = 500

_Subset = TypeVar("_Subset", bound="DataclassInstance")


def setting(
    default: Any,
    help: str,
    group: str,
    choices: Iterable[str] | None = None,
    secret: bool = False,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A field of Settings; a `secret` one stays out of the repr, so out of logs and tracebacks.

    `parse` reads the flag's or variable's text when the field's type alone would lose something.
    """
    return field(
        default=default,
        repr=not secret,
        metadata={
            "help": help,
            "group": group,
            "choices": tuple(choices) if choices else None,
            "parse": parse,
        },
    )


def model_path(raw: str) -> Path:
    """`--model`'s text as a Path that still reads as a path when it was written as one.

    Path("./models/x") is models/x, which reads as the Hub id ORG/NAME: a folder not made yet
    would be downloaded from the Hub instead of reported missing. Written with a leading ./ or
    ../, it is made absolute, which no Hub id is.
    """
    path = Path(raw)
    if raw in (".", "..") or raw.startswith(("./", "../")):
        return path.absolute()
    return path


@dataclass(frozen=True)
class Settings:
    # model
    model: Path | None = setting(
        None,
        "Prepared model folder (from `qa-worker export`), or a Hub id, prepared (int8) into "
        "the model cache on first use; `demo` defaults to csarron/mobilebert-uncased-squad-v2.",
        "model",
        parse=model_path,
    )
    model_revision: str | None = setting(
        None, "Hub branch, tag or commit when --model is a Hub id; default: main.", "model"
    )
    model_cache: Path | None = setting(
        None,
        "Folder for models prepared from Hub ids; default $XDG_CACHE_HOME/kafka-qa-worker/models "
        "(~/.cache/kafka-qa-worker/models).",
        "model",
    )
    progress: bool | None = setting(
        None,
        "Progress bars on stderr for downloads, model preparation and answering a file; "
        "default: only when stderr is a terminal.",
        "model",
    )
    precision: Precision | None = setting(
        None,
        "ONNX file to load: fp32, int8 or int8-static (exported with --quantize int8-static); "
        "default: the one the manifest names.",
        "model",
        choices=typing.get_args(Precision),
    )
    inference_streams: int = setting(
        0,
        "Batches run at once, each on its own threads; 0: chosen for the available cores.",
        "model",
    )
    threads: int = setting(
        0,
        "ONNX Runtime intra-op threads per inference stream; 0: the available cores shared "
        "out among the streams.",
        "model",
    )
    # question answering
    top_k: int = setting(1, "Answers returned per question (best first).", "qa")
    max_answer_len: int = setting(15, "Longest answer in tokens.", "qa")
    max_seq_len: int | None = setting(
        None, "Tokens per window; default min(model max length, 384) as in the reference.", "qa"
    )
    doc_stride: int | None = setting(
        None, "Overlap in tokens between windows; default min(max_seq_len // 2, 128).", "qa"
    )
    max_windows: int = setting(
        DEFAULT_MAX_WINDOWS,
        "Most windows one question (or one field of a question set) may make of its context; "
        "more is a `too_many_windows` dead letter, refused before any is made. Windows advance "
        "by max_seq_len - question tokens - specials - doc_stride tokens, so a long question "
        "over a long context makes many.",
        "qa",
    )
    handle_impossible_answer: bool = setting(
        False, "Let the null answer compete with spans, as in the reference pipeline.", "qa"
    )
    null_threshold: float | None = setting(
        None,
        "Answer only when the best span's score beats the null score by more than this margin; "
        "unset: rank the null answer like the reference does.",
        "qa",
    )
    align_to_words: bool = setting(
        True, "Widen answers to whole words, as the reference does by default.", "qa"
    )
    # batching
    batch_size: int = setting(
        0,
        "Most windows in one inference batch; 0: chosen for the layout, 1 when each inference "
        "stream has one thread (a batch gains little there and holds up the windows behind "
        "it), 16 otherwise.",
        "batching",
    )
    max_batch_tokens: int = setting(
        1024, "Most padded tokens (windows x longest window) in one inference batch.", "batching"
    )
    max_padding: float = setting(
        0.05,
        "Most padding a batch carries, as a share of its real tokens; a window that would add "
        "more waits for a batch of windows closer to its length.",
        "batching",
    )
    max_wait_ms: float = setting(
        0.0,
        "How long an idle engine waits for a fuller batch; 0 dispatches at once.",
        "batching",
    )
    max_pending_windows: int = setting(
        4096,
        "Work budget: most windows the questions being answered may hold at once (waiting, "
        "running or being decoded), for long contexts and for the rest each; beyond it no more "
        "questions are tokenized, and a partition's fetching pauses once its share of "
        "max_in_flight events wait. Memory "
        "grows by about 14 KB per window (docs/batching.md); a question larger than the budget "
        "still runs.",
        "batching",
    )
    # kafka
    broker: str = setting(
        "localhost:9092", "Kafka bootstrap servers, comma-separated host:port.", "kafka"
    )
    questions_topic: str = setting(
        "qa-questions", "Topic the worker reads questions from.", "kafka"
    )
    answers_topic: str = setting("qa-answers", "Topic the worker writes answers to.", "kafka")
    dead_letter_topic: str = setting(
        "qa-dead-letters", "Topic for events that cannot be answered, with the reason.", "kafka"
    )
    group_id: str = setting(
        "kafka-qa-worker", "Consumer group; replicas with the same group share partitions.", "kafka"
    )
    security_protocol: str = setting(
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
        "kafka",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    sasl_mechanism: str = setting(
        "PLAIN",
        "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
        "kafka",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    sasl_username: str | None = setting(None, "SASL user name.", "kafka")
    sasl_password: str | None = setting(
        None, "SASL password (prefer the environment).", "kafka", secret=True
    )
    ssl_cafile: Path | None = setting(
        None, "CA bundle that signed the brokers' certificates.", "kafka"
    )
    ssl_certfile: Path | None = setting(None, "Client certificate for mutual TLS.", "kafka")
    ssl_keyfile: Path | None = setting(None, "Private key of the client certificate.", "kafka")
    session_timeout_s: float = setting(
        10.0, "Consumer group session timeout; a dead replica's partitions move after it.", "kafka"
    )
    group_instance_id: str | None = setting(
        None,
        "Static membership (KIP-345; Kafka 2.3 or later): this replica's id in the consumer "
        "group, unique among the replicas and the same across its restarts. Stopping sends no "
        "LeaveGroup, and a replica back within --session-timeout-s gets its own partitions again "
        "without a rebalance; one that does not come back holds its partitions unread for that "
        "long. Unset: dynamic membership, where every stop and every start rebalances the group.",
        "kafka",
    )
    commit_interval_s: float = setting(
        1.0, "How often acknowledged offsets are committed.", "kafka"
    )
    fetch_max_wait_ms: int = setting(
        500,
        "Longest the broker may hold a fetch while no records arrive. Kafka answers as soon as "
        "records arrive; brokers that hold every fetch this long (tansu) add it to latency.",
        "kafka",
    )
    compression_type: str = setting(
        "none",
        "Compression of the batches the worker produces (answers, tags, dead letters): none, "
        "gzip, snappy, lz4 or zstd. Batches it reads may use any of them, whatever this says.",
        "kafka",
        choices=("none", "gzip", "snappy", "lz4", "zstd"),
    )
    # tagging and request/reply
    question_sets: Path | None = setting(
        None, "YAML or JSON file of question sets to tag documents with.", "tagging"
    )
    documents_topics: str | None = setting(
        None,
        "Documents topics to tag, comma-separated; `topic=set` gives the topic a default "
        "question set (events may name their own in `question_set`).",
        "tagging",
    )
    tags_topic: str = setting("qa-tags", "Topic for tags events.", "tagging")
    reply_topics: str | None = setting(
        None,
        "Comma-separated glob patterns of topics a question may name as its reply topic; "
        "unset: no reply topics.",
        "tagging",
    )
    # worker
    max_in_flight: int = setting(
        256,
        "Most events being answered at once, shared by the partitions assigned: each may have "
        "this divided by their number (at least 1) at once, and one holding more is paused "
        "alone until one of its own is answered, so a busy partition never keeps a quiet one "
        "waiting to be read. A partition holding this many events not yet acknowledged "
        "(answered ones wait for the earliest of their partition) is paused alone too.",
        "worker",
    )
    deadline_ms: int | None = setting(
        None,
        "Default deadline from event time; later events go to the dead-letter topic. "
        "Events may set their own `deadline_ms`.",
        "worker",
    )
    max_question_chars: int = setting(
        2_000, "Longer questions go to the dead-letter topic.", "worker"
    )
    max_context_chars: int = setting(
        100_000, "Longer contexts go to the dead-letter topic.", "worker"
    )
    max_json_depth: int = setting(
        64,
        "Most levels of nested arrays and objects an event may have; deeper events go to the "
        "dead-letter topic.",
        "worker",
    )
    max_json_values: int = setting(
        10_000,
        "Most JSON values an event may hold (each object, array, string, number, true, false "
        "and null counts one; object keys do not); events with more go to the dead-letter topic.",
        "worker",
    )
    http_host: str = setting(
        "0.0.0.0", "Address of the /metrics, /healthz, /readyz server.", "worker"
    )
    http_port: int = setting(8000, "Port of the /metrics, /healthz, /readyz server.", "worker")
    http_max_connections: int = setting(
        0,
        "Most connections the /metrics, /healthz, /readyz server holds open at once; with all "
        "taken, a new connection closes the one whose request (or wait for one) began longest "
        "ago, so probes are still answered. 0: half the open-file limit (RLIMIT_NOFILE), at "
        "most 1024; more than half is refused at start, the other half being kept for the "
        "worker's Kafka sockets and files.",
        "worker",
    )
    http_idle_timeout_s: float = setting(
        5.0,
        "How long the /metrics, /healthz, /readyz server keeps a connection on which no request "
        "has begun (a new one, or one kept alive after a response).",
        "worker",
    )
    http_request_timeout_s: float = setting(
        5.0,
        "How long a request to the /metrics, /healthz, /readyz server may take to arrive, "
        "headers and body (from its first byte), and its response to be taken by the client; "
        "slower connections are closed.",
        "worker",
    )
    drain_timeout_s: float = setting(
        30.0, "On SIGTERM, how long to finish in-flight events before exiting.", "worker"
    )
    stall_timeout_s: float = setting(
        300.0,
        "A partition with lag whose committed offset has not moved, and none of whose windows "
        "ran, for this long makes the worker not ready, naming it "
        "(qa_worker_partition_stalled); keep it above any drain or delivery retry.",
        "worker",
    )
    # observability
    tracing: str = setting(
        "off",
        "`otlp` exports OpenTelemetry traces over OTLP/HTTP, configured by the standard OTEL_ "
        "variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...); "
        "needs the `tracing` extra.",
        "worker",
        choices=("off", "otlp"),
    )
    log_format: str = setting(
        "text",
        "`json` logs one JSON object per line, with trace_id, span_id and event_id on lines "
        "about an event.",
        "worker",
        choices=("text", "json"),
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            # `nan <= 0` is False, so NaN would pass every bound below; a NaN or infinite timeout
            # reaches asyncio's timer heap, where it stalls every other timer of the loop.
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{describe(spec.name)} must be a finite number, got {value}")
        for name in ("questions_topic", "answers_topic", "dead_letter_topic", "tags_topic"):
            problem = topic_name_problem(getattr(self, name))
            if problem is not None:
                raise ConfigError(f"{describe(name)}: {problem}")
        for item in (self.documents_topics or "").split(","):
            topic = item.partition("=")[0].strip()
            problem = None if not item.strip() else topic_name_problem(topic)
            if problem is not None:
                raise ConfigError(f"{describe('documents_topics')}: {problem}")
        for name, least in LEAST_VALUES.items():
            problem = least_problem(getattr(self, name), least)
            if problem is not None:
                raise ConfigError(f"{describe(name)} {problem}")
        positive = (
            "max_pending_windows",
            "max_in_flight",
            "max_question_chars",
            "max_context_chars",
            "max_json_depth",
            "max_json_values",
            "max_windows",
            "fetch_max_wait_ms",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{describe(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_json_depth > MAX_JSON_DEPTH_LIMIT:
            raise ConfigError(
                f"{describe('max_json_depth')} must be at most {MAX_JSON_DEPTH_LIMIT}, got "
                f"{self.max_json_depth}: deeper values would reach the recursion limit of the "
                "JSON encoder that writes answers"
            )
        if self.stall_timeout_s <= 0:
            raise ConfigError(
                f"{describe('stall_timeout_s')} must be above 0, got {self.stall_timeout_s}"
            )
        if not 0 <= self.http_port <= MAX_PORT:
            # getaddrinfo takes the port modulo 65536: 83539 would listen on 18003.
            raise ConfigError(
                f"{describe('http_port')} must be 0 to {MAX_PORT}, got {self.http_port}"
            )
        if self.http_max_connections < 0:
            raise ConfigError(
                f"{describe('http_max_connections')} must be 0 or more, got "
                f"{self.http_max_connections}"
            )
        for name in ("http_idle_timeout_s", "http_request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{describe(name)} must be above 0, got {getattr(self, name)}")
        for name in ("threads", "inference_streams", "batch_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{describe(name)} must be 0 or more, got {getattr(self, name)}")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ConfigError(f"{describe('max_seq_len')} must be at least 8")
        if self.doc_stride is not None and self.doc_stride < 0:
            raise ConfigError(f"{describe('doc_stride')} must be 0 or more")
        if self.deadline_ms is not None and self.deadline_ms < 1:
            raise ConfigError(f"{describe('deadline_ms')} must be at least 1")
        instance_id = self.group_instance_id
        if instance_id is not None and (
            instance_id in {".", ".."} or not _TOPIC_NAME.fullmatch(instance_id)
        ):
            # Kafka's own clients refuse such an id (JoinGroupRequest.validateGroupInstanceId,
            # the topic-name rules); aiokafka would send it as it is.
            raise ConfigError(
                f"{describe('group_instance_id')}: {instance_id!r} is not a valid group instance "
                "id: use 1 to 249 letters, digits, '.', '_' or '-', other than '.' and '..'"
            )
        if self.documents_topics and self.question_sets is None:
            raise ConfigError(f"{describe('documents_topics')} needs {describe('question_sets')}")
        tls_files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
        for name in tls_files:
            if getattr(self, name) is not None and "SSL" not in self.security_protocol:
                raise ConfigError(
                    f"{describe(name)} is set but {describe('security_protocol')} is "
                    f"{self.security_protocol}, which uses no TLS; use SSL or SASL_SSL"
                )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError(f"{describe('ssl_keyfile')} needs {describe('ssl_certfile')} too")
        if self.sasl_username is not None and "SASL" not in self.security_protocol:
            raise ConfigError(
                f"{describe('sasl_username')} is set but {describe('security_protocol')} is "
                f"{self.security_protocol}; use SASL_SSL or SASL_PLAINTEXT"
            )

    def subset(self, kind: type[_Subset]) -> _Subset:
        """A `kind` built from the settings of its field names: `QAOptions` (the default answering
        options, which events and question-set fields may override) or `BatchLimits` (for the
        streaming batcher and every offline command alike). The caller names the type, so the
        configuration does not depend on the QA layer it configures."""
        return kind(**{spec.name: getattr(self, spec.name) for spec in dataclasses.fields(kind)})

    def require_model(self) -> Path:
        if self.model is None:
            raise ConfigError(f"no model folder given: pass {describe('model')}")
        return self.model

    @classmethod
    def from_sources(
        cls, flags: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            flag_value = getattr(flags, spec.name, None) if flags is not None else None
            if flag_value is not None:
                values[spec.name] = flag_value
            elif env_name(spec.name) in environ:
                raw = environ[env_name(spec.name)]
                try:
                    values[spec.name] = parse_value(spec, raw)
                except ValueError as error:
                    raise ConfigError(f"{env_name(spec.name)}={raw!r}: {error}") from None
        return cls(**values)


# The least value of each answering and batching setting that QAOptions or BatchLimits carries
# too. Those types are also built from what passed no Settings (a question set's fields, the
# batch size chosen for a layout, tests), so they check their fields against this table as well:
# one rule and one wording, naming the setting's flag here and the field there.
LEAST_VALUES: dict[str, int] = {
    "top_k": 1,
    "max_answer_len": 1,
    "max_batch_tokens": 1,
    "max_wait_ms": 0,
    "max_padding": 0,
}


def least_problem(value: float, least: int) -> str | None:
    """Why `value` is below `least`, in the words of every LEAST_VALUES check; None if it is not."""
    if value >= least:
        return None
    if least == 0:
        return f"cannot be negative, got {value}"
    return f"must be at least {least}, got {value}"


def check_least_values(values: DataclassInstance, least: Mapping[str, int] = LEAST_VALUES) -> None:
    """Raises ValueError naming the first field of `values` below its least value in `least`."""
    for spec in dataclasses.fields(values):
        if spec.name in least:
            problem = least_problem(getattr(values, spec.name), least[spec.name])
            if problem is not None:
                raise ValueError(f"{spec.name} {problem}")


def settings_environment(
    settings: Settings, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`base` (default: this process's environment) with every QA_ variable replaced by
    `settings`: the environment that makes a child `qa-worker` read exactly these settings."""
    base = os.environ if base is None else base
    environ = {key: value for key, value in base.items() if not key.startswith(ENV_PREFIX)}
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if value is not None:
            environ[env_name(spec.name)] = str(value)
    return environ


MAX_PORT = 65_535
# Kafka's own rule (kafka.common.internals.Topic): a topic the broker would refuse leaves every
# record sent to it failing, so names are checked before anything is sent.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse `name` as a topic name, or None when it is valid."""
    if name in {".", ".."} or not _TOPIC_NAME.fullmatch(name):
        return (
            f"{name!r} is not a valid Kafka topic name: use 1 to 249 letters, digits, '.', "
            "'_' or '-', other than '.' and '..'"
        )
    return None


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe(name: str) -> str:
    return f"{flag_name(name)} / {env_name(name)}"


def base_type(spec: dataclasses.Field[Any]) -> type:
    """The type a setting's text parses into: its field's type without None; `str` for a
    Literal of strings, whose values the setting's `choices` admit."""
    hint = typing.get_type_hints(Settings)[spec.name]
    # `Literal[...] | None` is a typing.Union, not a types.UnionType.
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str
    return hint


def parse_value(spec: dataclasses.Field[Any], raw: str) -> Any:
    kind = base_type(spec)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError("expected true or false")
    choices = spec.metadata["choices"]
    if choices and raw not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}")
    return (spec.metadata["parse"] or kind)(raw)


def add_arguments(
    parser: argparse.ArgumentParser, groups: Iterable[str], only: Iterable[str] | None = None
) -> None:
    """Adds the flags of the given setting groups (of those, only the settings named in `only`,
    when given); unset flags stay None so env vars can apply, and the help shows the default."""
    wanted = set(groups)
    names = None if only is None else set(only)
    for spec in dataclasses.fields(Settings):
        if spec.metadata["group"] not in wanted or (names is not None and spec.name not in names):
            continue
        kind = base_type(spec)
        help_text = f"{spec.metadata['help']} [{shown_default(spec)}env {env_name(spec.name)}]"
        if kind is bool:
            parser.add_argument(
                flag_name(spec.name),
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(spec.name),
                dest=spec.name,
                type=spec.metadata["parse"] or kind,
                choices=spec.metadata["choices"],
                default=None,
                help=help_text,
            )


def shown_default(spec: dataclasses.Field[Any]) -> str:
    """The default as a setting's help shows it, `default: X; `; empty for a setting unset by
    default, whose own text says what unset means."""
    if spec.default is None:
        return ""
    value = str(spec.default).lower() if isinstance(spec.default, bool) else spec.default
    return f"default: {value}; "


def markdown_table() -> str:
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for spec in dataclasses.fields(Settings):
        default = "" if spec.default is None else f"`{spec.default}`"
        rows.append(
            f"| `{flag_name(spec.name)}` | `{env_name(spec.name)}` | {default} "
            f"| {spec.metadata['help']} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown_table())
    else:
        sys.exit("usage: python -m worker.config --markdown")

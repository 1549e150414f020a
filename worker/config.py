"""The worker's one configuration object.

Every setting is a field of `Settings`. Each can come from a command-line flag (`--top-k`), an
environment variable (`QA_TOP_K`) or its default, in that order of precedence. The README's
configuration table is generated from these fields (`python -m worker.config --markdown`), and a
test keeps the two in step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "QA_"


def setting(default: Any, help: str, group: str, choices: Iterable[str] | None = None) -> Any:
    return field(
        default=default,
        metadata={"help": help, "group": group, "choices": tuple(choices) if choices else None},
    )


@dataclass(frozen=True)
class Settings:
    # model
    model: Path | None = setting(None, "Prepared model folder (from `qa-worker export`).", "model")
    precision: str | None = setting(
        None,
        "ONNX file to load: fp32 or int8; default: the one the manifest names.",
        "model",
        choices=("fp32", "int8"),
    )
    threads: int = setting(
        0, "ONNX Runtime intra-op threads; 0 uses one per available core.", "model"
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
    batch_size: int = setting(16, "Most windows in one inference batch.", "batching")
    max_batch_tokens: int = setting(
        8192, "Most padded tokens (windows x longest window) in one inference batch.", "batching"
    )

    def __post_init__(self) -> None:
        positive = ("top_k", "max_answer_len", "batch_size", "max_batch_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{describe(name)} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"{describe('threads')} must be 0 or more, got {self.threads}")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ConfigError(f"{describe('max_seq_len')} must be at least 8")
        if self.doc_stride is not None and self.doc_stride < 0:
            raise ConfigError(f"{describe('doc_stride')} must be 0 or more")

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


class ConfigError(ValueError):
    """A setting has a value the worker cannot use."""


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe(name: str) -> str:
    return f"{flag_name(name)} / {env_name(name)}"


def base_type(spec: dataclasses.Field[Any]) -> type:
    hint = typing.get_type_hints(Settings)[spec.name]
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
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
    return kind(raw)


def add_arguments(parser: argparse.ArgumentParser, groups: Iterable[str]) -> None:
    """Adds the flags of the given setting groups; unset flags stay None so env vars can apply."""
    wanted = set(groups)
    for spec in dataclasses.fields(Settings):
        if spec.metadata["group"] not in wanted:
            continue
        kind = base_type(spec)
        help_text = f"{spec.metadata['help']} [env {env_name(spec.name)}]"
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
                type=kind,
                choices=spec.metadata["choices"],
                default=None,
                help=help_text,
            )


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

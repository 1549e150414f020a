import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from worker.batching.layout import batch_limits
from worker.batching.plan import BatchLimits
from worker.cli import build_parser, main
from worker.config import (
    LEAST_VALUES,
    Settings,
    add_arguments,
    base_type,
    env_name,
    flag_name,
    markdown_table,
    parse_value,
)
from worker.errors import ConfigError
from worker.qa import QAOptions
from worker.stream.app import build_app

CONFIGURATION_PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ("model", "qa", "batching"))
    return parser.parse_args(argv)


def test_flag_beats_environment_beats_default() -> None:
    environ = {"QA_TOP_K": "4", "QA_MAX_ANSWER_LEN": "20"}
    settings = Settings.from_sources(parse(["--top-k", "2"]), environ)
    assert settings.top_k == 2
    assert settings.max_answer_len == 20
    assert settings.batch_size == Settings().batch_size


def test_environment_values_are_typed() -> None:
    environ = {
        "QA_MODEL": "/models/qa",
        "QA_HANDLE_IMPOSSIBLE_ANSWER": "yes",
        "QA_NULL_THRESHOLD": "-0.25",
        "QA_PRECISION": "int8",
    }
    settings = Settings.from_sources(None, environ)
    assert settings.model == Path("/models/qa")
    assert settings.handle_impossible_answer is True
    assert settings.null_threshold == -0.25
    assert settings.precision == "int8"


def test_boolean_flags_can_switch_off_an_environment_default() -> None:
    settings = Settings.from_sources(parse(["--no-align-to-words"]), {"QA_ALIGN_TO_WORDS": "true"})
    assert settings.align_to_words is False


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"QA_TOP_K": "many"}, "QA_TOP_K='many'"),
        ({"QA_TOP_K": "0"}, "--top-k / QA_TOP_K must be at least 1"),
        ({"QA_MAX_JSON_DEPTH": "0"}, "--max-json-depth / QA_MAX_JSON_DEPTH must be at least 1"),
        ({"QA_MAX_JSON_DEPTH": "501"}, "QA_MAX_JSON_DEPTH must be at most 500, got 501"),
        ({"QA_MAX_JSON_VALUES": "0"}, "--max-json-values / QA_MAX_JSON_VALUES must be at least 1"),
        ({"QA_PRECISION": "fp16"}, "expected one of fp32, int8"),
        ({"QA_HANDLE_IMPOSSIBLE_ANSWER": "maybe"}, "expected true or false"),
        ({"QA_COMPRESSION_TYPE": "brotli"}, "expected one of none, gzip, snappy, lz4, zstd"),
        ({"QA_STALL_TIMEOUT_S": "0"}, "--stall-timeout-s / QA_STALL_TIMEOUT_S must be above 0"),
        ({"QA_STALL_TIMEOUT_S": "-5"}, "QA_STALL_TIMEOUT_S must be above 0, got -5.0"),
        ({"QA_BATCH_SIZE": "-1"}, "--batch-size / QA_BATCH_SIZE must be 0 or more, got -1"),
        ({"QA_MAX_PADDING": "-0.5"}, "--max-padding / QA_MAX_PADDING cannot be negative, got -0.5"),
        ({"QA_MAX_WAIT_MS": "-1"}, "--max-wait-ms / QA_MAX_WAIT_MS cannot be negative, got -1.0"),
        ({"QA_HTTP_PORT": "65536"}, "--http-port / QA_HTTP_PORT must be 0 to 65535, got 65536"),
        ({"QA_HTTP_PORT": "83539"}, "QA_HTTP_PORT must be 0 to 65535, got 83539"),
        ({"QA_HTTP_PORT": "-1"}, "QA_HTTP_PORT must be 0 to 65535, got -1"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        Settings.from_sources(None, environ)
    assert fragment in str(caught.value)


FLOAT_SETTINGS = [spec.name for spec in dataclasses.fields(Settings) if base_type(spec) is float]


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_a_float_setting_that_is_not_a_finite_number_is_refused(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_sources(None, {env_name(name): raw})
    assert f"{flag_name(name)} / {env_name(name)} must be a finite number" in str(caught.value)


def test_run_with_a_nan_timeout_flag_exits_2_naming_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--http-idle-timeout-s", "nan"]) == 2
    assert "--http-idle-timeout-s / QA_HTTP_IDLE_TIMEOUT_S must be a finite number" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("port", [0, 1, 65_535])
def test_http_ports_at_the_ends_of_the_range_are_taken(port: int) -> None:
    assert Settings.from_sources(None, {"QA_HTTP_PORT": str(port)}).http_port == port


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_codec_reaches_the_producer(codec: str, tmp_path: Path) -> None:
    from worker.stream.app import build_app

    settings = Settings.from_sources(None, {"QA_COMPRESSION_TYPE": codec})
    app = build_app(settings, str(tmp_path))
    assert app.conf.producer_compression_type == (None if codec == "none" else codec)
    assert Settings.from_sources(None, {"QA_STALL_TIMEOUT_S": "0.001"}).stall_timeout_s == 0.001


@pytest.mark.parametrize("name", sorted(LEAST_VALUES))
def test_a_value_below_its_least_is_refused_alike_as_a_setting_and_as_a_field(name: str) -> None:
    below = LEAST_VALUES[name] - 1
    with pytest.raises(ConfigError) as as_setting:
        Settings(**{name: below})
    # The types a command builds from the settings, which question sets and tests build too.
    options = {spec.name for spec in dataclasses.fields(QAOptions)}
    kind: type[QAOptions | BatchLimits] = QAOptions if name in options else BatchLimits
    with pytest.raises(ValueError) as as_field:
        kind(**{name: below})
    setting_words = str(as_setting.value).removeprefix(f"{flag_name(name)} / {env_name(name)} ")
    assert setting_words == str(as_field.value).removeprefix(f"{name} ")
    assert setting_words.startswith(("must be at least", "cannot be negative"))


def test_limits_take_a_batch_size_the_layout_chose_never_the_setting_s_0() -> None:
    assert Settings(batch_size=0).batch_size == 0
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        BatchLimits(batch_size=0)


def test_precision_takes_the_manifest_s_precisions_alone() -> None:
    spec = next(spec for spec in dataclasses.fields(Settings) if spec.name == "precision")
    assert spec.metadata["choices"] == ("fp32", "int8", "int8-static")
    assert base_type(spec) is str
    assert parse(["--precision", "int8-static"]).precision == "int8-static"
    with pytest.raises(SystemExit):
        parse(["--precision", "fp16"])


def test_missing_model_says_which_flag_to_pass() -> None:
    with pytest.raises(ConfigError, match="--model / QA_MODEL"):
        Settings().require_model()


def test_the_configuration_page_documents_every_setting() -> None:
    assert markdown_table() in CONFIGURATION_PAGE.read_text(encoding="utf-8"), (
        "docs/configuration.md's table is stale: regenerate it with "
        "`python -m worker.config --markdown`"
    )


def test_the_sasl_password_stays_out_of_the_repr() -> None:
    settings = Settings(
        security_protocol="SASL_SSL", sasl_username="qa", sasl_password="hunter2-secret"
    )
    assert "hunter2-secret" not in repr(settings) and "sasl_password" not in repr(settings)
    assert "sasl_username='qa'" in repr(settings)
    assert settings.sasl_password == "hunter2-secret"


def documented_settings() -> list[str]:
    """The setting names the configuration table lists, by their flags."""
    page = CONFIGURATION_PAGE.read_text(encoding="utf-8")
    flags = re.findall(r"^\| `(--[a-z-]+)` \| `QA_", page, re.M)
    return [flag.removeprefix("--").replace("-", "_") for flag in flags]


def sample_argv(spec: dataclasses.Field[Any]) -> tuple[list[str], Any]:
    """Flags that set `spec` to a value other than its default, and that value."""
    kind = base_type(spec)
    if kind is bool:
        value = not spec.default
        return [("--" if value else "--no-") + spec.name.replace("_", "-")], value
    choices = spec.metadata["choices"]
    raw = choices[-1] if choices else {int: "7", float: "2.5", Path: "/tmp/x"}.get(kind, "x.y")
    return [flag_name(spec.name), raw], parse_value(spec, raw)


def test_the_configuration_table_lists_every_setting() -> None:
    assert documented_settings() == [spec.name for spec in dataclasses.fields(Settings)]


@pytest.mark.parametrize("name", documented_settings())
def test_every_documented_flag_works_on_run(name: str) -> None:
    spec = next(spec for spec in dataclasses.fields(Settings) if spec.name == name)
    argv, value = sample_argv(spec)
    args = build_parser().parse_args(["run", *argv])
    assert getattr(args, name) == value != spec.default


def test_faust_environment_variables_do_not_override_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # faust's own names; before, BROKER_COMMIT_INTERVAL=6 made one commit in 14 s.
    monkeypatch.setenv("BROKER_COMMIT_INTERVAL", "6")
    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "99")
    monkeypatch.setenv("CONSUMER_AUTO_OFFSET_RESET", "latest")
    monkeypatch.setenv("APP_ENV_PREFIX", "OTHER_")
    settings = Settings(commit_interval_s=1.0, session_timeout_s=3.0)
    conf = build_app(settings, str(tmp_path)).conf
    assert conf.broker_commit_interval == 1.0
    assert conf.broker_session_timeout == 3.0
    assert conf.consumer_auto_offset_reset == "earliest"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("answers_topic", "bad topic!"),
        ("questions_topic", ""),
        ("dead_letter_topic", ".."),
        ("tags_topic", "t" * 250),
        ("documents_topics", "docs=set,bad/topic"),
    ],
)
def test_invalid_topic_names_are_refused_at_start_up(name: str, value: str) -> None:
    extra = {"question_sets": Path("sets.yaml")} if name == "documents_topics" else {}
    with pytest.raises(ConfigError, match="not a valid Kafka topic name") as caught:
        Settings(**{name: value}, **extra)
    assert flag_name(name) in str(caught.value)


def test_topic_names_at_the_length_limit_are_accepted() -> None:
    assert Settings(answers_topic="a" * 249, dead_letter_topic="a.b_c-D9").answers_topic


def test_run_with_an_invalid_answers_topic_exits_2_naming_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--answers-topic", "bad topic!"]) == 2
    assert "--answers-topic / QA_ANSWERS_TOPIC" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_a_tls_file_without_tls_is_refused_naming_both_settings(name: str, protocol: str) -> None:
    # It would be ignored: the worker would connect without the TLS it names.
    with pytest.raises(ConfigError, match="uses no TLS") as caught:
        Settings(security_protocol=protocol, **{name: Path("file.pem")})
    assert flag_name(name) in str(caught.value) and "--security-protocol" in str(caught.value)
    certificate = {"ssl_certfile": Path("cert.pem")} if name == "ssl_keyfile" else {}
    for tls in ("SSL", "SASL_SSL"):
        assert Settings(security_protocol=tls, **{name: Path("file.pem")}, **certificate)


def test_a_key_without_its_certificate_is_refused() -> None:
    with pytest.raises(ConfigError, match="--ssl-keyfile / QA_SSL_KEYFILE needs --ssl-certfile"):
        Settings(security_protocol="SSL", ssl_keyfile=Path("key.pem"))


@pytest.mark.parametrize(
    ("batch_size", "streams", "threads", "expected"),
    [
        (0, 2, 1, 1),  # chosen: single-threaded streams run windows one at a time
        (0, 1, 2, 16),  # chosen: threads of one stream share a batch's rows
        (0, 2, 2, 16),
        (1, 1, 2, 1),  # given: taken as it is, on any layout
        (8, 2, 1, 8),
    ],
)
def test_batch_size_zero_is_chosen_by_the_stream_layout(
    batch_size: int, streams: int, threads: int, expected: int
) -> None:
    settings = Settings(batch_size=batch_size, inference_streams=streams, threads=threads)
    limits = batch_limits(settings)
    assert limits.batch_size == expected
    assert limits.max_batch_tokens == settings.max_batch_tokens

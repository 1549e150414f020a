import argparse
from pathlib import Path

import pytest

from worker.config import Settings, add_arguments, markdown_table
from worker.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


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
        ({"QA_PRECISION": "fp16"}, "expected one of fp32, int8"),
        ({"QA_HANDLE_IMPOSSIBLE_ANSWER": "maybe"}, "expected true or false"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        Settings.from_sources(None, environ)
    assert fragment in str(caught.value)


def test_missing_model_says_which_flag_to_pass() -> None:
    with pytest.raises(ConfigError, match="--model / QA_MODEL"):
        Settings().require_model()


def test_readme_documents_every_setting() -> None:
    assert markdown_table() in README.read_text(encoding="utf-8"), (
        "README's configuration table is stale: regenerate it with "
        "`python -m worker.config --markdown`"
    )


def test_the_sasl_password_stays_out_of_the_repr() -> None:
    settings = Settings(
        security_protocol="SASL_SSL", sasl_username="qa", sasl_password="hunter2-secret"
    )
    assert "hunter2-secret" not in repr(settings) and "sasl_password" not in repr(settings)
    assert "sasl_username='qa'" in repr(settings)
    assert settings.sasl_password == "hunter2-secret"

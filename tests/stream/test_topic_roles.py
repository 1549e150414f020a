"""Topic settings that cannot work together are refused before the worker joins its group."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import Settings
from worker.errors import ConfigError
from worker.stream.app import check_topic_roles

SETS = {"deals", "news"}
TAGGING = {"question_sets": "sets.yaml", "documents_topics": "docs=deals,filings"}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"dead_letter_topic": "qa-questions"}, ["--questions-topic", "--dead-letter-topic"]),
        ({"answers_topic": "qa-questions"}, ["--questions-topic", "--answers-topic"]),
        ({**TAGGING, "dead_letter_topic": "docs"}, ["--documents-topics", "--dead-letter-topic"]),
        ({**TAGGING, "tags_topic": "filings"}, ["--documents-topics", "--tags-topic"]),
        ({**TAGGING, "answers_topic": "docs"}, ["--documents-topics", "--answers-topic"]),
        ({**TAGGING, "tags_topic": "qa-questions"}, ["--questions-topic", "--tags-topic"]),
        ({**TAGGING, "documents_topics": "qa-questions"}, ["--questions-topic"]),
        ({**TAGGING, "documents_topics": "docs=deals,docs=news"}, ["--documents-topics"]),
        ({"dead_letter_topic": "qa-answers"}, ["--answers-topic", "--dead-letter-topic"]),
        ({**TAGGING, "tags_topic": "qa-answers"}, ["--answers-topic", "--tags-topic"]),
        ({**TAGGING, "documents_topics": "docs=nosuchset"}, ["'nosuchset'", "deals, news"]),
    ],
)
def test_topics_that_cannot_work_together_are_refused_naming_the_settings(
    settings: dict[str, Any], named: list[str]
) -> None:
    with pytest.raises(ConfigError) as refused:
        check_topic_roles(Settings(**settings), SETS)
    for name in named:
        assert name in str(refused.value)


@pytest.mark.parametrize(
    "settings",
    [{}, TAGGING, {**TAGGING, "documents_topics": "docs=news"}, {"tags_topic": "qa-answers"}],
    ids=["defaults", "tagging", "a-known-default-set", "tags-unused-without-documents"],
)
def test_topics_of_their_own_are_accepted(settings: dict[str, Any]) -> None:
    check_topic_roles(Settings(**settings), SETS)

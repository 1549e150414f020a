"""Content tagging and request/reply: question sets, tags events, reply routing."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from parity import texts
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    TopicWatcher,
    collect,
    create_topics,
    kill_at_random_moments,
    produce,
    worker_settings,
)
from tests.support.worker_process import run_qa_worker
from worker.embedded.broker import EmbeddedBroker
from worker.errors import QuestionSetError
from worker.events import load_schema
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.qa import QAOptions
from worker.stream import QAWorker
from worker.tagging import load_question_sets

DOCUMENTS, TAGS = "documents", "tags"

QUESTION_SETS = """\
deals:
  fields:
    buyer: {question: "Which company made the acquisition?"}
    target: {question: "Which company was acquired?", top_k: 2}
    price: {question: "How much was paid?", null_threshold: 0.1, max_answer_len: 6}
    when: {question: "When did it happen?", handle_impossible_answer: true}
places:
  fields:
    city: {question: "Which city is it about?"}
"""


@pytest.fixture
def question_sets(tmp_path: Path) -> Path:
    path = tmp_path / "sets.yaml"
    path.write_text(QUESTION_SETS, encoding="utf-8")
    return path


def documents(count: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [
        {"id": f"d{i}", "text": texts.context(rng, rng.choice([20, 80, 400])), "metadata": {"n": i}}
        for i in range(count)
    ]


def run_cli(*args: str) -> list[dict]:
    done = run_qa_worker(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def tag_with_cli(model: Path, question_sets: Path, docs_file: Path) -> list[dict]:
    return run_cli(
        "tag",
        "--model",
        str(model),
        "--precision",
        "fp32",
        "--question-sets",
        str(question_sets),
        "--input",
        str(docs_file),
        "--question-set",
        "deals",
    )


# --- question sets


def test_one_set_or_several_named_sets(tmp_path: Path, question_sets: Path) -> None:
    sets = load_question_sets(question_sets, QAOptions(top_k=1))
    assert list(sets) == ["deals", "places"]
    price = {field.name: field for field in sets["deals"].fields}["price"]
    assert price.options == QAOptions(top_k=1, null_threshold=0.1, max_answer_len=6)
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"fields": {"who": {"question": "Who?"}}}))
    assert list(load_question_sets(single, QAOptions())) == ["default"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("deals: {fields: {buyer: {top_k: 2}}}", "deals.buyer: needs `question`"),
        ("deals: {fields: {buyer: {question: 'Who', colour: red}}}", "unknown options ['colour']"),
        ("deals: {fields: {buyer: {question: 'Who', top_k: two}}}", "top_k: expected int"),
        ("deals: {fields: {buyer: {question: 'Who', top_k: 0}}}", "top_k must be at least 1"),
        ("deals: {name: x}", "deals: needs `fields`"),
        ("[1, 2]", "expected a mapping"),
    ],
)
def test_bad_question_sets_say_where(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "sets.yaml"
    path.write_text(text)
    with pytest.raises(QuestionSetError) as caught:
        load_question_sets(path, QAOptions())
    assert fragment in str(caught.value)


# --- offline


def test_offline_tags_equal_answers_for_each_field(
    exported_models: dict[str, Path], question_sets: Path, tmp_path: Path
) -> None:
    model = str(exported_models["bert"])
    docs = documents(12, seed=1)
    docs_file = tmp_path / "docs.jsonl"
    broken = [{"id": "no-text"}, {"id": "odd-set", "text": "x", "question_set": "nope"}]
    docs_file.write_text("\n".join(json.dumps(d) for d in docs + broken))
    tagged = tag_with_cli(Path(model), question_sets, docs_file)
    schema = Draft202012Validator(load_schema("tags"))
    *tagged, no_text, odd_set = tagged
    assert no_text == {"id": None, "error": no_text["error"]}
    assert no_text["error"]["code"] == "invalid_event" and "text" in no_text["error"]["message"]
    assert odd_set["id"] == "odd-set" and odd_set["error"]["code"] == "unknown_question_set"
    assert [t["id"] for t in tagged] == [d["id"] for d in docs]
    for line in tagged:
        schema.validate(line)
        assert line["metadata"] == {"n": int(line["id"][1:])}
    for field in load_question_sets(question_sets, QAOptions())["deals"].fields:
        pairs = tmp_path / f"{field.name}.jsonl"
        pairs.write_text(
            "\n".join(
                json.dumps({"id": d["id"], "question": field.question, "context": d["text"]})
                for d in docs
            )
        )
        options = [
            "--top-k",
            str(field.options.top_k),
            "--max-answer-len",
            str(field.options.max_answer_len),
        ]
        if field.options.null_threshold is not None:
            options += ["--null-threshold", str(field.options.null_threshold)]
        if field.options.handle_impossible_answer:
            options += ["--handle-impossible-answer"]
        answers = run_cli(
            "answer", "--model", model, "--precision", "fp32", *options, "--input", str(pairs)
        )
        for line, answer in zip(tagged, answers, strict=True):
            tag = line["tags"][field.name]
            assert (tag["answer"], tag["start"], tag["end"]) == (
                answer["answer"],
                answer["start"],
                answer["end"],
            )
            assert tag["score"] == pytest.approx(answer["score"], abs=1e-5)
            assert tag["found"] is not answer["is_impossible"]
    abstained = [line["tags"]["price"] for line in tagged if not line["tags"]["price"]["found"]]
    assert abstained, "the null_threshold field should abstain on some documents"
    assert all((tag["answer"], tag["start"], tag["end"]) == ("", 0, 0) for tag in abstained)


# --- through the broker


async def start_tagging_worker(
    broker: EmbeddedBroker, model: Path, question_sets: Path, **overrides: object
) -> QAWorker:
    settings = worker_settings(
        broker.bootstrap_servers,
        model,
        question_sets=question_sets,
        documents_topics=f"{DOCUMENTS}=deals",
        tags_topic=TAGS,
        **overrides,
    )
    worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
    await worker.start()
    return worker


@pytest.mark.broker
async def test_tags_through_the_broker_equal_offline_tags(
    exported_models: dict[str, Path], question_sets: Path, tmp_path: Path
) -> None:
    model = exported_models["bert"]
    docs = documents(20, seed=2)
    docs_file = tmp_path / "docs.jsonl"
    docs_file.write_text("\n".join(json.dumps(d) for d in docs))
    offline = tag_with_cli(Path(str(model)), question_sets, docs_file)
    bad = [
        json.dumps({"id": "no-set", "text": "x", "question_set": "nope"}).encode(),
        json.dumps({"id": "no-text"}).encode(),
    ]
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        for topic in (DOCUMENTS, TAGS):
            await broker.create_topic(topic, 4)
        worker = await start_tagging_worker(broker, model, question_sets)
        try:
            keys = [d["id"].encode() for d in docs] + [None, None]
            values = [json.dumps(d).encode() for d in docs] + bad
            await produce(broker.bootstrap_servers, values, keys, topic=DOCUMENTS)
            records = await collect(
                broker.bootstrap_servers, [TAGS, DEAD_LETTERS], len(values), timeout=120
            )
        finally:
            await worker.stop()
    tags = {r.json()["id"]: r for r in records if r.topic == TAGS}
    assert set(tags) == {d["id"] for d in docs}
    for line in offline:
        record = tags[line["id"]]
        assert record.key == line["id"].encode()
        streamed = record.json()
        assert streamed["question_set"] == "deals"
        assert streamed["metadata"] == line["metadata"]
        for name, tag in line["tags"].items():
            other = streamed["tags"][name]
            assert (other["answer"], other["start"], other["end"], other["found"]) == (
                tag["answer"],
                tag["start"],
                tag["end"],
                tag["found"],
            )
            assert other["score"] == pytest.approx(tag["score"], abs=1e-5)
    letters = {r.json()["error"]["code"] for r in records if r.topic == DEAD_LETTERS}
    assert letters == {"unknown_question_set", "invalid_event"}


@pytest.mark.broker
async def test_replies_go_to_allowed_topics_only(exported_models: dict[str, Path]) -> None:
    model = exported_models["bert"]
    ((question, context),) = texts.pairs(seed=3, count=1)

    def event(event_id: str, reply_to: str | None = None) -> bytes:
        body = {"id": event_id, "question": question, "context": context}
        if reply_to:
            body["reply_to"] = reply_to
        return json.dumps(body).encode()

    values = [
        event("by-field", "replies.client-a"),
        event("by-header"),
        event("refused", "payments"),
        event("plain"),
    ]
    headers = [
        [("correlation-id", b"c1")],
        [("correlation-id", b"c2"), ("reply-to", b"replies.client-b")],
        [("correlation-id", b"c3")],
        [("correlation-id", b"c4")],
    ]
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        for topic in ("replies.client-a", "replies.client-b", "payments"):
            await broker.create_topic(topic, 1)
        settings = worker_settings(broker.bootstrap_servers, model, reply_topics="replies.*")
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        try:
            keys = [b"k1", b"k2", b"k3", b"k4"]
            await produce(broker.bootstrap_servers, values, keys, headers)
            records = await collect(
                broker.bootstrap_servers,
                [ANSWERS, DEAD_LETTERS, "replies.client-a", "replies.client-b", "payments"],
                4,
                timeout=60,
            )
        finally:
            await worker.stop()
    where = {r.json()["id"]: r for r in records}
    assert where["by-field"].topic == "replies.client-a"
    assert where["by-header"].topic == "replies.client-b"
    assert where["plain"].topic == ANSWERS
    assert where["refused"].topic == DEAD_LETTERS
    refusal = where["refused"].json()["error"]
    assert refusal["code"] == "reply_topic_not_allowed" and "payments" in refusal["message"]
    for event_id, key, correlation in (("by-field", b"k1", b"c1"), ("by-header", b"k2", b"c2")):
        assert where[event_id].key == key
        assert ("correlation-id", correlation) in where[event_id].headers


@pytest.mark.broker
async def test_killed_mid_document_never_publishes_partial_tags(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    many_fields = tmp_path / "wide.yaml"
    many_fields.write_text(
        "wide:\n  fields:\n"
        + "".join(f'    f{i}: {{question: "What is item {i}?"}}\n' for i in range(12))
    )
    docs = documents(150, seed=4)
    log = tmp_path / "worker.log"
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        for topic in (DOCUMENTS, TAGS):
            await broker.create_topic(topic, 4)
        settings = worker_settings(
            broker.bootstrap_servers,
            exported_models["bert"],
            question_sets=many_fields,
            documents_topics=f"{DOCUMENTS}=wide",
            tags_topic=TAGS,
            batch_size=4,
        )
        await produce(
            broker.bootstrap_servers, [json.dumps(d).encode() for d in docs], topic=DOCUMENTS
        )
        async with TopicWatcher(broker.bootstrap_servers, [TAGS]) as tags:
            kills = await kill_at_random_moments(
                settings, log, tags, len(docs), most_kills=3, seed=7
            )
            events = [record.json() for record in tags.records]
    assert kills >= 2
    first: dict[str, dict] = {}
    for event in events:
        assert set(event["tags"]) == {f"f{i}" for i in range(12)}, "a partial tags event"
        previous = first.setdefault(event["id"], event)
        assert {k: (v["answer"], v["start"]) for k, v in event["tags"].items()} == {
            k: (v["answer"], v["start"]) for k, v in previous["tags"].items()
        }
    print(f"\n{kills} kills, {len(events)} tags events for {len(docs)} documents")


def test_documents_topics_need_question_sets() -> None:
    from worker.config import Settings
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="QA_QUESTION_SETS"):
        dataclasses.replace(Settings(), documents_topics="docs=deals")

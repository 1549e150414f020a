"""Question file reading and SQuAD 2.0 scoring; every expected number is worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.squad import (
    InputFileError,
    QuestionRecord,
    evaluate,
    exact_match,
    f1,
    normalize_answer,
    read_questions,
)

# --- normalization


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # lower -> "the  big, cat!" ; punctuation -> "the  big cat" ; article -> " big cat"
        ("The  Big, CAT!", "big cat"),
        # every article goes, whole words only: "theater" and "answer" keep their letters
        ("an apple a day, the theater answer", "apple day theater answer"),
        # tabs, newlines and runs of spaces collapse to one space, ends trimmed
        ("\tNew\n  York  ", "new york"),
        # punctuation is deleted, not replaced by a space
        ("don't", "dont"),
        # punctuation goes before articles, so the hyphen glues "the" to "cat" first
        ("the-cat", "thecat"),
        ("A.", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# --- exact match and F1


def test_exact_match_takes_the_best_gold() -> None:
    # "The Cat." -> "cat" equals "a cat" -> "cat"
    assert exact_match("The Cat.", ["dog", "a cat"]) == 1.0
    # "big cat" matches neither "cat" nor "dog"
    assert exact_match("big cat", ["a cat", "dog"]) == 0.0


def test_f1_partial_overlap() -> None:
    # pred [big, cat], gold [cat]: 1 common; P = 1/2, R = 1/1; F1 = 2 * 1/2 / (3/2) = 2/3
    assert f1("the big cat", ["a cat"]) == pytest.approx(2 / 3)


def test_f1_takes_the_best_gold() -> None:
    # vs "a cat": 2/3 as above.
    # vs "big black cat" -> [big, black, cat]: 2 common; P = 2/2, R = 2/3;
    #   F1 = 2 * (2/3) / (5/3) = 4/5.  max(2/3, 4/5) = 0.8
    assert f1("the big cat", ["a cat", "big black cat"]) == pytest.approx(0.8)


def test_f1_counts_repeated_tokens_once_per_occurrence() -> None:
    # pred [cat, cat], gold [cat]: common is min(2, 1) = 1; P = 1/2, R = 1; F1 = 2/3
    assert f1("cat cat", ["cat"]) == pytest.approx(2 / 3)
    # pred [cat, cat], gold [cat, cat, dog]: common min(2, 2) = 2; P = 2/2, R = 2/3;
    #   F1 = 2 * (2/3) / (5/3) = 4/5 (matching distinct tokens only would give 2/5)
    assert f1("cat cat", ["cat cat dog"]) == pytest.approx(0.8)


def test_f1_without_common_tokens_is_zero() -> None:
    assert f1("a dog", ["the cat"]) == 0.0


def test_empty_prediction_on_answerable_question_scores_zero() -> None:
    assert exact_match("", ["cat"]) == 0.0
    assert f1("", ["cat"]) == 0.0


def test_unanswerable_question_rewards_only_the_empty_answer() -> None:
    assert exact_match("", []) == 1.0
    assert f1("", []) == 1.0
    assert exact_match("cat", []) == 0.0
    assert f1("cat", []) == 0.0
    # "The." normalizes to "", so it is an abstention too
    assert f1("The.", []) == 1.0


def test_golds_that_normalize_to_nothing_are_dropped() -> None:
    # Only gold "the" -> "": treated as unanswerable, so "" is right and "cat" wrong.
    assert exact_match("", ["the"]) == 1.0
    assert f1("cat", ["the"]) == 0.0
    # With a real gold beside it, "the" no longer makes the empty answer right.
    assert exact_match("", ["the", "cat"]) == 0.0
    assert f1("", ["the", "cat"]) == 0.0


# --- evaluate


def record(
    question_id: str, gold: list[str], *, is_impossible: bool | None = None
) -> QuestionRecord:
    if is_impossible is None:
        is_impossible = not gold
    return QuestionRecord(
        question_id, f"question {question_id}?", "some context", gold, is_impossible
    )


RECORDS = [
    record("q1", ["a cat", "big black cat"]),
    record("q2", ["Paris"]),
    record("q3", []),
    record("q4", []),
]


def test_evaluate_splits_answerable_and_unanswerable() -> None:
    predictions = {"q1": "the big cat", "q2": "paris.", "q3": "", "q4": "London"}
    # q1: EM 0, F1 0.8 (see test_f1_takes_the_best_gold); q2: EM 1, F1 1
    # q3: abstains on unanswerable: 1, 1; q4: answers unanswerable: 0, 0
    assert evaluate(RECORDS, predictions) == {
        "exact": pytest.approx(50.0),  # (0 + 1 + 1 + 0) / 4
        "f1": pytest.approx(70.0),  # (0.8 + 1 + 1 + 0) / 4
        "total": 4,
        "HasAns_exact": pytest.approx(50.0),  # (0 + 1) / 2
        "HasAns_f1": pytest.approx(90.0),  # (0.8 + 1) / 2
        "HasAns_total": 2,
        "NoAns_exact": pytest.approx(50.0),  # (1 + 0) / 2
        "NoAns_f1": pytest.approx(50.0),
        "NoAns_total": 2,
    }


def test_evaluate_counts_a_missing_prediction_as_empty() -> None:
    # q2 missing -> "" on an answerable question: 0; q3 missing -> "" on unanswerable: 1
    predictions = {"q1": "big black cat", "q4": ""}
    result = evaluate(RECORDS, predictions)
    assert result["exact"] == pytest.approx(75.0)  # (1 + 0 + 1 + 1) / 4
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["NoAns_exact"] == pytest.approx(100.0)


def test_evaluate_omits_an_empty_subset() -> None:
    result = evaluate(RECORDS[:2], {"q1": "cat", "q2": "Paris"})
    assert result["HasAns_total"] == 2
    assert not any(key.startswith("NoAns") for key in result)


# Margins chosen so that EM and F1 prefer different thresholds. Sorted high to low:
#   q2 0.9 (right: 1/1 if answered), q1 0.5 (EM 0, F1 0.8 if answered),
#   q3 0.3 and q4 -0.2 (unanswerable: 1/1 if abstained, 0/0 if answered).
# Answerable questions score 0 when abstained.
#   threshold  answers        EM                     F1
#   0.9        none           0 + 0 + 1 + 1 = 2      2
#   0.5        q2             1 + 0 + 1 + 1 = 3      3
#   0.3        q2 q1          1 + 0 + 1 + 1 = 3      1 + 0.8 + 1 + 1 = 3.8
#   -0.2       q2 q1 q3       1 + 0 + 0 + 1 = 2      2.8
#   -1.2       all            1 + 0 + 0 + 0 = 1      1.8
# EM: 3 first reached at 0.5 and only tied at 0.3, so 0.5 (the higher) wins: 3/4 = 75%.
# F1: 3.8 at 0.3: 3.8/4 = 95%.
MARGIN_PREDICTIONS = {"q1": "the big cat", "q2": "Paris", "q3": "Rome", "q4": "London"}
MARGINS = {"q1": 0.5, "q2": 0.9, "q3": 0.3, "q4": -0.2}


def test_best_threshold_search() -> None:
    result = evaluate(RECORDS, MARGIN_PREDICTIONS, MARGINS)
    assert result["best_exact"] == pytest.approx(75.0)
    assert result["best_exact_threshold"] == 0.5
    assert result["best_f1"] == pytest.approx(95.0)
    assert result["best_f1_threshold"] == 0.3
    # The plain scores use the predictions as given: q2 right, q1 F1 0.8, q3 and q4 wrong.
    assert result["exact"] == pytest.approx(25.0)
    assert result["f1"] == pytest.approx(45.0)


@pytest.mark.parametrize("metric", ["exact", "f1"])
def test_best_threshold_reproduces_its_score(metric: str) -> None:
    result = evaluate(RECORDS, MARGIN_PREDICTIONS, MARGINS)
    threshold = result[f"best_{metric}_threshold"]
    # What the worker does with null_threshold=threshold: answer only when margin > threshold.
    worker_output = {
        qid: text if MARGINS[qid] > threshold else "" for qid, text in MARGIN_PREDICTIONS.items()
    }
    assert evaluate(RECORDS, worker_output)[metric] == pytest.approx(result[f"best_{metric}"])


def test_best_threshold_can_answer_everything() -> None:
    records = [record("a", ["cat"]), record("b", ["dog"])]
    # Both right when answered: abstain all 0, threshold -0.5 (answer a) 1, below all 2.
    result = evaluate(records, {"a": "cat", "b": "dog"}, {"a": 0.2, "b": -0.5})
    assert result["best_exact"] == pytest.approx(100.0)
    # below every margin: the smallest margin minus 1
    assert result["best_exact_threshold"] == pytest.approx(-1.5)


def test_best_threshold_keeps_abstaining_when_answering_never_helps() -> None:
    records = [record("a", []), record("b", ["dog"])]
    # a: unanswerable, wrongly answered; b: answerable, wrongly answered.
    # Abstain all (threshold 0.7): 1 + 0 = 1; answer a: 0; answer both: 0.
    result = evaluate(records, {"a": "cat", "b": "cow"}, {"a": 0.7, "b": 0.1})
    assert result["best_exact"] == pytest.approx(50.0)
    assert result["best_exact_threshold"] == 0.7


def test_best_threshold_does_not_split_equal_margins() -> None:
    # Same margin: no threshold answers "a" without "b". Abstain both: 0 + 1 = 1;
    # answer both: 1 + 0 = 1. Answering only "a" would give 2 (100%), but is not reachable.
    records = [record("a", ["cat"]), record("b", [])]
    result = evaluate(records, {"a": "cat", "b": "cow"}, {"a": 0.4, "b": 0.4})
    assert result["best_exact"] == pytest.approx(50.0)
    assert result["best_exact_threshold"] == 0.4


def test_best_threshold_ties_are_exact_not_rounded() -> None:
    # F1 when answered (abstaining scores 0, except 1 for the unanswerable "u"):
    #   a 0.9: [on, on] vs [big, on, sat, sat, red]: 1 common: 2 * 1 / (2 + 5) = 2/7
    #   u 0.8: unanswerable, answered wrongly: 0
    #   b 0.7: [big, big, dog, dog] vs [red, in, dog, big, on, sat]: 2 common: 4/10 = 2/5
    #   c 0.6: [in, red, on, big] vs [sat, red, cat, red, cat, mat]: 1 common: 2/10 = 1/5
    #   d 0.5: [in, mat] vs [mat, red, mat]: 1 common: 2/5 = 2/5
    # Threshold 0.8 (answer a): 1 + 2/7 = 9/7. Answer all: 2/7 + 2/5 + 1/5 + 2/5 = 9/7 too,
    # but summed in floats it comes out a hair larger; the tie must still go to 0.8.
    records = [
        record("a", ["big on sat sat red"]),
        record("u", []),
        record("b", ["red in dog big on sat"]),
        record("c", ["sat red cat red cat mat"]),
        record("d", ["mat red mat"]),
    ]
    predictions = {
        "a": "on on",
        "u": "mat on mat dog",
        "b": "big big dog dog",
        "c": "in red on big",
        "d": "in mat",
    }
    margins = {"a": 0.9, "u": 0.8, "b": 0.7, "c": 0.6, "d": 0.5}
    result = evaluate(records, predictions, margins)
    assert result["best_f1"] == pytest.approx(100 * 9 / 7 / 5)
    assert result["best_f1_threshold"] == 0.8


def test_question_without_margin_abstains_at_every_threshold() -> None:
    # q2 has no span, so it scores 0 (answerable, abstained) whatever the threshold, even though
    # its prediction "Paris" is right. The rest, high to low: q1 0.5, q4 -0.2, q3 -0.3.
    #   threshold  answers     EM                  F1
    #   0.5        none        0 + 0 + 1 + 1 = 2   2
    #   -0.2       q1          2                   0.8 + 2 = 2.8
    #   -0.3       q1 q4       1                   1.8
    #   -1.3       q1 q4 q3    0                   0.8
    # Were q2 answerable at some margin above -0.2, EM 3 (75%) would be reachable.
    margins = {"q1": 0.5, "q3": -0.3, "q4": -0.2}
    result = evaluate(RECORDS, MARGIN_PREDICTIONS, margins)
    assert result["best_exact"] == pytest.approx(50.0)
    assert result["best_exact_threshold"] == 0.5
    assert result["best_f1"] == pytest.approx(70.0)
    assert result["best_f1_threshold"] == -0.2


def test_best_threshold_without_any_margin() -> None:
    # Everything abstains: q1, q2 score 0 and q3, q4 score 1: 50%. Any threshold does; 0.0 stands.
    result = evaluate(RECORDS, MARGIN_PREDICTIONS, {})
    assert result["best_exact"] == pytest.approx(50.0)
    assert result["best_f1"] == pytest.approx(50.0)
    assert result["best_exact_threshold"] == 0.0


def test_non_finite_margin_is_refused() -> None:
    with pytest.raises(ValueError, match=r'null margin of question "q3" is nan'):
        evaluate(RECORDS, MARGIN_PREDICTIONS, {**MARGINS, "q3": float("nan")})


def test_evaluate_refuses_records_without_gold() -> None:
    jsonl_record = QuestionRecord("x", "Who?", "Someone.", [], None)
    with pytest.raises(ValueError, match=r'"x" has no gold answers.*SQuAD-format file'):
        evaluate([jsonl_record], {"x": "Someone"})


def test_evaluate_refuses_answerable_question_without_answers() -> None:
    with pytest.raises(ValueError, match="is_impossible=False but has 0 gold answers"):
        evaluate([record("x", [], is_impossible=False)], {"x": ""})


# --- reading


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    return path


def test_jsonl_with_and_without_ids(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "questions.jsonl",
        [
            json.dumps({"id": "first", "question": "Who?", "context": "Ann."}),
            "",
            # no id: takes its line number, 3
            json.dumps({"question": "Where?", "context": "Rome."}),
            "   ",
            json.dumps({"id": 7, "question": "When?", "context": "Now."}),
            # U+2028 is legal unescaped inside a JSON string and must not split the line
            json.dumps({"question": "What?", "context": "one\u2028two"}, ensure_ascii=False),
        ],
        newline="\r\n",
    )
    records = read_questions(path)
    assert [r.id for r in records] == ["first", "3", "7", "6"]
    assert records[1] == QuestionRecord("3", "Where?", "Rome.", [], None)
    assert records[3].context == "one\u2028two"


def test_a_blank_question_or_context_is_read_for_the_engine_to_refuse(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "blank.jsonl",
        [
            '{"question": " ", "context": "Ann."}',
            '{"question": "Who?", "context": ""}',
            '{"question": "Who?", "context": "Ann."}',
        ],
    )
    assert [(r.question, r.context) for r in read_questions(path)] == [
        (" ", "Ann."),
        ("Who?", ""),
        ("Who?", "Ann."),
    ]


def test_single_line_jsonl_is_not_mistaken_for_squad(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "one.jsonl", ['{"question": "Who?", "context": "Ann."}'])
    assert read_questions(path) == [QuestionRecord("1", "Who?", "Ann.", [], None)]


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"question": "Who?", "context": "Ann."', "not valid JSON"),
        ('["Who?", "Ann."]', "expected a JSON object, got an array"),
        ('{"question": "Who?"}', 'missing "context"'),
        ('{"question": 5, "context": "Ann."}', '"question" must be a string, got a number'),
        ('{"id": " ", "question": "Who?", "context": "Ann."}', '"id" is empty'),
        ('{"id": true, "question": "Who?", "context": "Ann."}', '"id" must be a string'),
    ],
)
def test_malformed_jsonl_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl", ['{"question": "Who?", "context": "Ann."}', "", bad_line]
    )
    with pytest.raises(InputFileError) as caught:
        read_questions(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 3: ")
    assert problem in message
    assert "each non-blank line must be a JSON object" in message


def test_jsonl_id_clashing_with_a_line_number(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "clash.jsonl",
        [
            '{"id": "2", "question": "Who?", "context": "Ann."}',
            '{"question": "Where?", "context": "Rome."}',
        ],
    )
    with pytest.raises(InputFileError, match=r'line 2: id "2" is already used on line 1'):
        read_questions(path)


def rome_article(**question_fields: object) -> dict[str, object]:
    """A SQuAD article of one paragraph and one answerable question; `question_fields` are
    added to the question."""
    return {
        "title": "Rome",
        "paragraphs": [
            {
                "context": "Rome is in Italy.",
                "qas": [
                    {
                        "id": "r1",
                        "question": "Where is Rome?",
                        "answers": [{"text": "Italy", "answer_start": 11}],
                        **question_fields,
                    }
                ],
            }
        ],
    }


SQUAD_V2 = {
    "version": "v2.0",
    "data": [
        {
            "title": "Cats",
            "paragraphs": [
                {
                    "context": "The cat sat on the mat.",
                    "qas": [
                        {
                            "id": "c1",
                            "question": "Where did the cat sit?",
                            "answers": [
                                {"text": "on the mat", "answer_start": 12},
                                {"text": "the mat", "answer_start": 15},
                            ],
                            "is_impossible": False,
                        },
                        {
                            "id": "c2",
                            "question": "Where did the dog sit?",
                            "answers": [],
                            "plausible_answers": [{"text": "the mat", "answer_start": 15}],
                            "is_impossible": True,
                        },
                    ],
                }
            ],
        },
        rome_article(is_impossible=False),
    ],
}


def test_squad_v2(tmp_path: Path) -> None:
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(SQUAD_V2, indent=2), encoding="utf-8")
    assert read_questions(path) == [
        QuestionRecord(
            "c1",
            "Where did the cat sit?",
            "The cat sat on the mat.",
            ["on the mat", "the mat"],
            False,
        ),
        # plausible_answers are not gold
        QuestionRecord("c2", "Where did the dog sit?", "The cat sat on the mat.", [], True),
        QuestionRecord("r1", "Where is Rome?", "Rome is in Italy.", ["Italy"], False),
    ]


def test_squad_v1_questions_are_answerable(tmp_path: Path) -> None:
    # SQuAD 1.1 has no is_impossible.
    squad_v1 = {"version": "1.1", "data": [rome_article()]}
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps(squad_v1), encoding="utf-8")
    [only] = read_questions(path)
    assert only == QuestionRecord("r1", "Where is Rome?", "Rome is in Italy.", ["Italy"], False)
    assert evaluate([only], {"r1": "italy"})["HasAns_exact"] == 100.0


@pytest.mark.parametrize(
    ("question", "answers", "is_impossible", "problem"),
    [
        (1, [{"text": "the mat"}], True, '"is_impossible" is true but 1 answers are given'),
        (0, [], False, 'no answers, but "is_impossible" is not true'),
    ],
)
def test_squad_gold_must_agree_with_is_impossible(
    tmp_path: Path, question: int, answers: list[dict[str, str]], is_impossible: bool, problem: str
) -> None:
    broken = json.loads(json.dumps(SQUAD_V2))
    qa = broken["data"][0]["paragraphs"][0]["qas"][question]
    qa["answers"], qa["is_impossible"] = answers, is_impossible
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(InputFileError) as caught:
        read_questions(path)
    assert f"at data[0].paragraphs[0].qas[{question}]: {problem}" in str(caught.value)


def test_malformed_squad_names_the_question(tmp_path: Path) -> None:
    broken = json.loads(json.dumps(SQUAD_V2))
    del broken["data"][0]["paragraphs"][0]["qas"][1]["question"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(
        InputFileError, match=r'at data\[0\]\.paragraphs\[0\]\.qas\[1\]: missing "question"'
    ):
        read_questions(path)


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"cannot read .*missing\.jsonl"):
        read_questions(tmp_path / "missing.jsonl")

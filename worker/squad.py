"""Question files (JSONL or SQuAD JSON) and SQuAD 2.0 scoring.

A question file is either JSONL, one `{"id", "question", "context"}` object per line, or a
SQuAD-format JSON document (`{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`). Only
SQuAD files carry gold answers, so only they can be scored.

Scoring follows the official SQuAD 2.0 evaluation script: answers are normalized (lowercase, no
punctuation, no articles, single spaces), exact match and token F1 take the best gold answer, and
an unanswerable question is answered correctly by the empty string. The script's `na_prob`
threshold search is expressed here in the worker's own convention: a question is answered only
when `margin = best_span_score - null_score` exceeds `null_threshold`, so the reported
`best_*_threshold` can be passed to the worker as `null_threshold` as is.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class InputFileError(ValueError):
    """A question file that cannot be read; the message names the file, the place and the fix."""


@dataclass(frozen=True)
class QuestionRecord:
    """One question, with its gold answers when the file carries them.

    Records read from JSONL have no gold: `gold_answers == []` and `is_impossible is None`. For
    SQuAD input `is_impossible` is the file's flag (False when absent, as in SQuAD 1.1) and
    `gold_answers` the answer texts, empty for an unanswerable question.
    """

    id: str
    question: str
    context: str
    gold_answers: list[str] = field(default_factory=list)
    is_impossible: bool | None = None


_JSONL_HINT = (
    'each non-blank line must be a JSON object like {"id": "q1", "question": "...", '
    '"context": "..."} ("id" is optional), or the whole file a SQuAD JSON document with a '
    '"data" list'
)
_SQUAD_HINT = (
    'a SQuAD file looks like {"data": [{"paragraphs": [{"context": "...", "qas": [{"id": "...", '
    '"question": "...", "answers": [{"text": "...", "answer_start": 0}]}]}]}]}'
)


def read_questions(path: Path) -> list[QuestionRecord]:
    """Read the questions of a JSONL or SQuAD JSON file, in file order.

    The format is told by content: a JSON object with a "data" list is SQuAD, anything else is
    read as JSONL. A JSONL line without "id" gets its 1-based line number as id. Raises
    `InputFileError` naming the file and the line (JSONL) or JSON location (SQuAD) at fault.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputFileError(f"{path}: not UTF-8 text ({error}); save it as UTF-8") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        # Not a single JSON document, so one object per line; JSONL errors are reported per line.
        document = None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        return _read_squad(path, document["data"])
    return _read_jsonl(path, text)


def _read_jsonl(path: Path, text: str) -> list[QuestionRecord]:
    records: list[QuestionRecord] = []
    line_of_id: dict[str, int] = {}
    # Split on "\n" only: str.splitlines() would also break at U+2028 and friends, which JSON
    # allows unescaped inside strings. A trailing "\r" is JSON whitespace, so CRLF files work.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue

        def error(problem: str, number: int = number) -> InputFileError:
            return InputFileError(f"{path}, line {number}: {problem}; {_JSONL_HINT}")

        try:
            item = json.loads(line)
        except json.JSONDecodeError as decode_error:
            raise error(
                f"not valid JSON ({decode_error.msg} at column {decode_error.colno})"
            ) from None
        if not isinstance(item, dict):
            raise error(f"expected a JSON object, got {_json_type(item)}")
        if "id" in item:
            raw_id = item["id"]
            # bool is an int subclass, but `true` is surely a mistake for an id.
            if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
                raise error(f'"id" must be a string or an integer, got {_json_type(raw_id)}')
            question_id = str(raw_id)
            if not question_id.strip():
                raise error('"id" is empty')
        else:
            question_id = str(number)
        if question_id in line_of_id:
            raise error(
                f'id "{question_id}" is already used on line {line_of_id[question_id]} '
                "(a line without an id takes its line number); give every question its own id"
            )
        line_of_id[question_id] = number
        records.append(
            QuestionRecord(
                id=question_id,
                question=_string_field(item, "question", error),
                context=_string_field(item, "context", error),
            )
        )
    return records


def _read_squad(path: Path, data: list[Any]) -> list[QuestionRecord]:
    records: list[QuestionRecord] = []
    seen: set[str] = set()

    def error_at(where: str) -> Callable[[str], InputFileError]:
        return lambda problem: InputFileError(f"{path}, at {where}: {problem}; {_SQUAD_HINT}")

    for a, article in enumerate(data):
        where = f"data[{a}]"
        for p, paragraph in enumerate(_list_field(article, "paragraphs", error_at(where))):
            where = f"data[{a}].paragraphs[{p}]"
            context = _string_field(_object(paragraph, error_at(where)), "context", error_at(where))
            for q, qa in enumerate(_list_field(paragraph, "qas", error_at(where))):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                error = error_at(where)
                question_id = _string_field(_object(qa, error), "id", error)
                if question_id in seen:
                    raise error(f'id "{question_id}" appears twice; ids must be unique')
                seen.add(question_id)
                # Test-style files without answers are still readable as questions; evaluate()
                # refuses them later.
                answers = _list_field(qa, "answers", error) if "answers" in qa else []
                gold: list[str] = []
                for n, answer in enumerate(answers):
                    text = _object(answer, error).get("text")
                    if not isinstance(text, str):
                        raise error(f'answers[{n}] needs a string "text"')
                    gold.append(text)
                is_impossible = qa.get("is_impossible", False)
                if not isinstance(is_impossible, bool):
                    raise error(
                        f'"is_impossible" must be true or false, got {_json_type(is_impossible)}'
                    )
                records.append(
                    QuestionRecord(
                        id=question_id,
                        question=_string_field(qa, "question", error),
                        context=context,
                        gold_answers=gold,
                        is_impossible=is_impossible,
                    )
                )
    return records


def _object(value: Any, error: Callable[[str], InputFileError]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise error(f"expected a JSON object, got {_json_type(value)}")
    return value


def _list_field(item: Any, key: str, error: Callable[[str], InputFileError]) -> list[Any]:
    item = _object(item, error)
    if key not in item:
        raise error(f'missing "{key}"')
    value = item[key]
    if not isinstance(value, list):
        raise error(f'"{key}" must be a list, got {_json_type(value)}')
    return value


def _string_field(item: dict[str, Any], key: str, error: Callable[[str], InputFileError]) -> str:
    if key not in item:
        raise error(f'missing "{key}"')
    value = item[key]
    if not isinstance(value, str):
        raise error(f'"{key}" must be a string, got {_json_type(value)}')
    if not value.strip():
        raise error(f'"{key}" is empty')
    return value


def _json_type(value: Any) -> str:
    # Name types as the file's author sees them, not as Python does.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- scoring -------------------------------------------------------------------------------------

# Official-script semantics: ASCII punctuation only, deleted outright (so "don't" -> "dont").
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

    Punctuation goes before articles, as in the official script: "the-cat" becomes "thecat".
    """
    without_punctuation = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", without_punctuation).split())


def _effective_golds(golds: Sequence[str]) -> list[str]:
    # As in the official script, golds that normalize to nothing do not count; with none left
    # the question is unanswerable and only the empty answer is right.
    return [gold for gold in golds if normalize_answer(gold)] or [""]


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer, else 0.0.

    With no gold answers (an unanswerable question) the right prediction is one that normalizes
    to the empty string.
    """
    predicted = normalize_answer(prediction)
    return max(float(predicted == normalize_answer(gold)) for gold in _effective_golds(golds))


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Token-level F1 between the normalized prediction and the best-matching gold answer.

    When the prediction or the gold normalizes to nothing, the score is 1.0 if both do, else 0.0;
    so an unanswerable question scores 1.0 exactly for an empty prediction.
    """
    predicted = normalize_answer(prediction).split()
    return max(_token_f1(predicted, normalize_answer(g).split()) for g in _effective_golds(golds))


def _token_f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(gold)
    return 2 * precision * recall / (precision + recall)


def evaluate(
    records: Sequence[QuestionRecord],
    predictions: Mapping[str, str],
    null_margins: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Score predictions against SQuAD gold answers, as the official SQuAD 2.0 script does.

    `predictions` maps a question id to the answer text; an empty string is an abstention, and a
    missing id counts as one. Returns `exact`, `f1` (percentages) and `total`, and the same three
    as `HasAns_*` / `NoAns_*` for the answerable / unanswerable questions when there are any.

    `null_margins`, when given, maps every question id to `best_span_score - null_score`, and
    `predictions[id]` must then be the best span's text, i.e. what the worker says when it
    answers. The worker answers when `margin > null_threshold` and abstains otherwise. The
    search tries each observed margin as the threshold (answer only the questions with a larger
    margin), plus answering everything, and adds `best_exact` / `best_f1` with the threshold that
    reaches each: pass it as `null_threshold` to get that score on this set. Among thresholds
    with the same score the highest (most abstentions) wins. For "answer everything" the
    threshold reported is the smallest margin minus 1.
    """
    if not records:
        raise ValueError("no questions to evaluate; read a SQuAD file with at least one question")
    ids = [record.id for record in records]
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
        raise ValueError(f"question ids must be unique, repeated: {', '.join(repeated[:5])}")
    for record in records:
        if record.is_impossible is None:
            raise ValueError(
                f'question "{record.id}" has no gold answers (JSONL input carries none); '
                "evaluate on a SQuAD-format file"
            )
        if record.is_impossible == bool(record.gold_answers):
            raise ValueError(
                f'question "{record.id}" is marked is_impossible={record.is_impossible} but has '
                f"{len(record.gold_answers)} gold answers; fix the file so they agree"
            )

    answered_exact = [exact_match(predictions.get(r.id, ""), r.gold_answers) for r in records]
    answered_f1 = [f1(predictions.get(r.id, ""), r.gold_answers) for r in records]
    result: dict[str, float] = {
        "exact": 100.0 * sum(answered_exact) / len(records),
        "f1": 100.0 * sum(answered_f1) / len(records),
        "total": len(records),
    }
    for name, answerable in (("HasAns", True), ("NoAns", False)):
        subset = [i for i, r in enumerate(records) if bool(r.gold_answers) == answerable]
        if subset:
            result[f"{name}_exact"] = 100.0 * sum(answered_exact[i] for i in subset) / len(subset)
            result[f"{name}_f1"] = 100.0 * sum(answered_f1[i] for i in subset) / len(subset)
            result[f"{name}_total"] = len(subset)

    if null_margins is not None:
        margins = _margins(null_margins, ids)
        abstained_exact = [exact_match("", r.gold_answers) for r in records]
        abstained_f1 = [f1("", r.gold_answers) for r in records]
        best, threshold = _best_threshold(margins, answered_exact, abstained_exact)
        result["best_exact"], result["best_exact_threshold"] = best, threshold
        best, threshold = _best_threshold(margins, answered_f1, abstained_f1)
        result["best_f1"], result["best_f1_threshold"] = best, threshold
    return result


def _margins(null_margins: Mapping[str, float], ids: Sequence[str]) -> list[float]:
    missing = [i for i in ids if i not in null_margins]
    if missing:
        raise ValueError(
            f"null_margins has no margin for {len(missing)} question(s), e.g. "
            f"{', '.join(missing[:5])}; give one for every question or leave null_margins out"
        )
    margins = [float(null_margins[i]) for i in ids]
    bad = [i for i, margin in zip(ids, margins, strict=True) if not math.isfinite(margin)]
    if bad:
        raise ValueError(f"null margins must be finite numbers, not for: {', '.join(bad[:5])}")
    return margins


def _best_threshold(
    margins: Sequence[float], answered: Sequence[float], abstained: Sequence[float]
) -> tuple[float, float]:
    """The best percentage score over thresholds, and the highest threshold that reaches it.

    `answered[i]` / `abstained[i]` are question i's score when the worker answers / abstains.
    Lowering the threshold past a margin turns that question from abstained to answered, so one
    sweep down the sorted margins visits every distinct outcome.
    """
    order = sorted(range(len(margins)), key=lambda i: margins[i], reverse=True)
    score = sum(abstained)
    # A threshold at the largest margin abstains on everything.
    best_score, best_threshold = score, margins[order[0]]
    for position, i in enumerate(order):
        score += answered[i] - abstained[i]
        following = order[position + 1] if position + 1 < len(order) else None
        # Questions with equal margins are answered together; no threshold separates them, so
        # scores in the middle of a tie are not reachable and must not be reported.
        if following is not None and margins[following] == margins[i]:
            continue
        threshold = margins[following] if following is not None else margins[i] - 1.0
        if score > best_score:
            best_score, best_threshold = score, threshold
    return 100.0 * best_score / len(margins), best_threshold

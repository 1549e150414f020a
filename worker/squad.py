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
from fractions import Fraction
from pathlib import Path
from typing import Any

from .errors import InputFileError


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
    except OSError as error:
        raise InputFileError(f"cannot read {path}: {error.strerror}") from None
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
                question=_string_field(item, "question", error, blank_ok=True),
                context=_string_field(item, "context", error, blank_ok=True),
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
            context = _string_field(
                _object(paragraph, error_at(where)), "context", error_at(where), blank_ok=True
            )
            for q, qa in enumerate(_list_field(paragraph, "qas", error_at(where))):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                error = error_at(where)
                question_id = _string_field(_object(qa, error), "id", error)
                if question_id in seen:
                    raise error(f'id "{question_id}" appears twice; ids must be unique')
                seen.add(question_id)
                gold: list[str] = []
                for n, answer in enumerate(_list_field(qa, "answers", error)):
                    text = _object(answer, error).get("text")
                    if not isinstance(text, str):
                        raise error(f'answers[{n}] needs a string "text"')
                    gold.append(text)
                is_impossible = qa.get("is_impossible", False)
                if not isinstance(is_impossible, bool):
                    raise error(
                        f'"is_impossible" must be true or false, got {_json_type(is_impossible)}'
                    )
                # Caught here rather than in evaluate() so that `qa-worker eval` fails before
                # spending a model run on a file it cannot score.
                if is_impossible and gold:
                    raise error(
                        f'"is_impossible" is true but {len(gold)} answers are given; '
                        "empty the answers or set is_impossible to false"
                    )
                if not is_impossible and not gold:
                    raise error(
                        'no answers, but "is_impossible" is not true; add the gold answers, '
                        "or set is_impossible to true if the question has none"
                    )
                records.append(
                    QuestionRecord(
                        id=question_id,
                        question=_string_field(qa, "question", error, blank_ok=True),
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


def _string_field(
    item: dict[str, Any],
    key: str,
    error: Callable[[str], InputFileError],
    blank_ok: bool = False,
) -> str:
    """`blank_ok` for a question or a context: the engine refuses an empty one with its own code
    (and takes a blank one, as the reference pipeline does), and that line's answer says so
    while the rest of the file is answered."""
    if key not in item:
        raise error(f'missing "{key}"')
    value = item[key]
    if not isinstance(value, str):
        raise error(f'"{key}" must be a string, got {_json_type(value)}')
    if not blank_ok and not value.strip():
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


# --- scoring

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
    return float(_exact_f1(prediction, golds))


def _exact_f1(prediction: str, golds: Sequence[str]) -> Fraction:
    # Kept as a fraction so that sums over a data set compare exactly: with floats, rounding can
    # make a threshold look better than an equally good higher one.
    predicted = normalize_answer(prediction).split()
    return max(_token_f1(predicted, normalize_answer(g).split()) for g in _effective_golds(golds))


def _token_f1(predicted: list[str], gold: list[str]) -> Fraction:
    if not predicted or not gold:
        return Fraction(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    # 2PR / (P + R) with P = common / |predicted| and R = common / |gold|
    return Fraction(2 * common, len(predicted) + len(gold))


def evaluate(
    records: Sequence[QuestionRecord],
    predictions: Mapping[str, str],
    null_margins: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Score predictions against SQuAD gold answers, as the official SQuAD 2.0 script does.

    `predictions` maps a question id to the answer text; an empty string is an abstention, and a
    missing id counts as one. Returns `exact`, `f1` (percentages) and `total`, and the same three
    as `HasAns_*` / `NoAns_*` for the answerable / unanswerable questions when there are any.

    `null_margins`, when given, maps a question id to `best_span_score - null_score`, and
    `predictions[id]` must then be the best span's text, i.e. what the worker says when it
    answers. The worker answers when `margin > null_threshold` and abstains otherwise; an id
    without a margin is a question with no span to give, which abstains at every threshold. The
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

    metrics: dict[str, Callable[[str, Sequence[str]], Fraction]] = {
        "exact": lambda prediction, golds: Fraction(exact_match(prediction, golds)),
        "f1": _exact_f1,
    }
    answered = {
        name: [metric(predictions.get(r.id, ""), r.gold_answers) for r in records]
        for name, metric in metrics.items()
    }
    result: dict[str, float] = {name: _percent(scores) for name, scores in answered.items()}
    result["total"] = len(records)
    for subset_name, answerable in (("HasAns", True), ("NoAns", False)):
        subset = [i for i, r in enumerate(records) if bool(r.gold_answers) == answerable]
        if subset:
            for name, scores in answered.items():
                result[f"{subset_name}_{name}"] = _percent([scores[i] for i in subset])
            result[f"{subset_name}_total"] = len(subset)

    if null_margins is not None:
        margins = [_margin(null_margins, question_id) for question_id in ids]
        for name, metric in metrics.items():
            abstained = [metric("", r.gold_answers) for r in records]
            best, threshold = _best_threshold(margins, answered[name], abstained)
            result[f"best_{name}"] = float(100 * best / len(records))
            result[f"best_{name}_threshold"] = threshold
    return result


def _percent(scores: Sequence[Fraction]) -> float:
    return float(100 * sum(scores, Fraction(0)) / len(scores))


def _margin(null_margins: Mapping[str, float], question_id: str) -> float | None:
    if question_id not in null_margins:
        return None
    margin = float(null_margins[question_id])
    # NaN would make the sort, and so the reported threshold, meaningless.
    if not math.isfinite(margin):
        raise ValueError(
            f'the null margin of question "{question_id}" is {margin}; margins must be finite '
            "(best span score minus null score)"
        )
    return margin


def _best_threshold(
    margins: Sequence[float | None], answered: Sequence[Fraction], abstained: Sequence[Fraction]
) -> tuple[Fraction, float]:
    """The best total score over thresholds, and the highest threshold that reaches it.

    `answered[i]` / `abstained[i]` are question i's score when the worker answers / abstains;
    a question without a margin always abstains. Lowering the threshold past a margin turns that
    question from abstained to answered, so one sweep down the sorted margins visits every
    reachable outcome.
    """
    margin_of = {i: margin for i, margin in enumerate(margins) if margin is not None}
    order = sorted(margin_of, key=margin_of.__getitem__, reverse=True)
    score = sum(abstained, Fraction(0))
    # A threshold at the largest margin abstains on everything; with no margins at all every
    # threshold scores the same and 0.0 stands for them.
    best_score, best_threshold = score, margin_of[order[0]] if order else 0.0
    for position, i in enumerate(order):
        score += answered[i] - abstained[i]
        following = order[position + 1] if position + 1 < len(order) else None
        # Questions with equal margins are answered together; no threshold separates them, so
        # scores in the middle of a tie are not reachable and must not be reported.
        if following is not None and margin_of[following] == margin_of[i]:
            continue
        threshold = margin_of[following] if following is not None else margin_of[i] - 1.0
        if score > best_score:
            best_score, best_threshold = score, threshold
    return best_score, best_threshold

"""tokenizer.json built from vocabulary files equals transformers' converted fast tokenizer.

For each vocabulary and tokenizer_config.json below, transformers (4.57, the reference's line)
converts the slow tokenizer files itself; the tokenizer built by worker.model.tokenizer_build must
give the same ids, offsets, word ids and type ids on texts in several scripts, pairs and singles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parity import texts
from parity.models import CORPUS
from tests.support.hub_layouts import write_vocabulary_files
from worker.errors import TokenizerBuildError
from worker.model.tokenizer_build import build_tokenizer

EXTRA_TEXTS = [
    ("What is [MASK] here?", "The [MASK] token and a [cls] in lowercase, <mask> and <s> too."),
    ("ÉCOLE Über", "Crème Brûlée at the CAFÉ, naïve Zoë; 東京大学 and 北京."),
    ("tabs\tand\u00a0nbsp", "zero\u200bwidth and control\u0007chars; é (e + combining ́)."),
]


def wordpiece_tokenizer_json(folder: Path, lowercase: bool) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = WordPieceTrainer(vocab_size=1500, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    path = folder / "trained.json"
    tokenizer.save(str(path))
    return path


def bpe_tokenizer_json(folder: Path) -> Path:
    from parity.roberta_tokenizer import byte_level_bpe_tokenizer

    path = folder / "trained.json"
    byte_level_bpe_tokenizer(CORPUS, 1500).save(str(path))
    return path


CASES = {
    "uncased": ("wordpiece", True, {"do_lower_case": True}),
    "cased": ("wordpiece", False, {"do_lower_case": False}),
    "cased-strip-accents": ("wordpiece", False, {"do_lower_case": False, "strip_accents": True}),
    "uncased-keep-accents": ("wordpiece", True, {"do_lower_case": True, "strip_accents": False}),
    "no-chinese-split": ("wordpiece", True, {"tokenize_chinese_chars": False}),
    "roberta": ("bpe", False, {}),
    "roberta-prefix-space": ("bpe", False, {"add_prefix_space": True}),
    "roberta-no-trim": ("bpe", False, {"trim_offsets": False}),
}


def encodings(tokenizer: Any, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """What the worker relies on, per encoding, for pairs and single texts."""
    singles = [question for question, _ in pairs]
    results = []
    for encoding in tokenizer.encode_batch(pairs) + tokenizer.encode_batch(singles):
        results.append(
            {
                "ids": encoding.ids,
                "offsets": encoding.offsets,
                "word_ids": encoding.word_ids,
                "type_ids": encoding.type_ids,
                "sequence_ids": encoding.sequence_ids,
            }
        )
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_built_tokenizer_equals_transformers_conversion(case: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    kind, lowercase, tokenizer_config = CASES[case]
    trained = (
        wordpiece_tokenizer_json(tmp_path, lowercase)
        if kind == "wordpiece"
        else bpe_tokenizer_json(tmp_path)
    )
    folder = tmp_path / "checkpoint"
    write_vocabulary_files(trained, folder, {"model_max_length": 512, **tokenizer_config})
    model_type = "bert" if kind == "wordpiece" else "roberta"
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}), "utf-8")

    converted = AutoTokenizer.from_pretrained(folder)
    assert converted.is_fast
    assert not (folder / "tokenizer.json").exists()
    built = build_tokenizer(folder)

    pairs = texts.pairs(seed=15, count=60) + EXTRA_TEXTS
    expected = encodings(converted.backend_tokenizer, pairs)
    assert encodings(built, pairs) == expected
    # The worker reads these files with truncation and padding of its own: compare what remains.
    ours, theirs = json.loads(built.to_str()), json.loads(converted.backend_tokenizer.to_str())
    for state in (ours, theirs):
        state.pop("truncation")
        state.pop("padding")
    assert ours == theirs
    # The vocabulary really was used: texts give more than unknown tokens.
    unknown = built.token_to_id("[UNK]" if kind == "wordpiece" else "<unk>")
    assert sum(token != unknown for item in expected for token in item["ids"]) > 1000


def test_cased_and_uncased_tokenize_differently(tmp_path: Path) -> None:
    # Guards the test above: a built tokenizer that ignored do_lower_case would still pass it
    # were both conversions alike.
    trained = wordpiece_tokenizer_json(tmp_path, lowercase=False)
    results = []
    for lower in (True, False):
        folder = tmp_path / f"lower-{lower}"
        write_vocabulary_files(trained, folder, {"do_lower_case": lower})
        results.append(build_tokenizer(folder).encode("The Amazon Rainforest").ids)
    assert results[0] != results[1]


def test_a_folder_without_vocabulary_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerBuildError, match=r"vocab\.txt.*vocab\.json and merges\.txt"):
        build_tokenizer(tmp_path)


def test_a_special_token_outside_the_vocabulary_is_an_error(tmp_path: Path) -> None:
    trained = wordpiece_tokenizer_json(tmp_path, lowercase=True)
    folder = tmp_path / "checkpoint"
    write_vocabulary_files(trained, folder, {"cls_token": "<cls>"})
    with pytest.raises(TokenizerBuildError, match="'<cls>' is not in the vocabulary"):
        build_tokenizer(folder)


ALIGN_CASES = {
    # A lowercasing tokenizer.json in a folder whose configuration says cased.
    "bert-cased-config": ("bert", {"do_lower_case": False}),
    "bert-strip-accents": ("bert", {"strip_accents": False, "tokenize_chinese_chars": False}),
    # Silent configuration: transformers' defaults apply (and agree with the file).
    "bert-silent": ("bert", {}),
    "roberta-prefix-space": ("roberta", {"add_prefix_space": True}),
    "roberta-no-trim": ("roberta", {"trim_offsets": False}),
    "roberta-silent": ("roberta", {}),
}


@pytest.mark.parametrize("case", list(ALIGN_CASES))
def test_a_given_tokenizer_json_is_adjusted_as_transformers_adjusts_it(
    case: str, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from parity.models import _bert_tokenizer, _roberta_tokenizer
    from worker.model.tokenizer_build import align_with_config

    model_type, tokenizer_config = ALIGN_CASES[case]
    backend = (
        _bert_tokenizer() if model_type == "bert" else _roberta_tokenizer()
    ).backend_tokenizer
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), "utf-8")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}), "utf-8")

    from_file = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    aligned = align_with_config(from_file, tmp_path, model_type)
    loaded = AutoTokenizer.from_pretrained(tmp_path).backend_tokenizer
    pairs = texts.pairs(seed=16, count=40) + EXTRA_TEXTS
    assert encodings(aligned, pairs) == encodings(loaded, pairs)
    # Changed exactly when transformers changes something.
    assert (aligned is from_file) == (encodings(from_file, pairs) == encodings(loaded, pairs))
    assert (aligned is from_file) == case.endswith("silent")

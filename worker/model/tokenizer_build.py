"""tokenizer.json from the files a checkpoint without one ships, as transformers would build it.

transformers turns `vocab.txt` (BERT WordPiece) or `vocab.json` + `merges.txt` (RoBERTa byte-level
BPE) into a fast tokenizer through its converters, then adjusts the result to
`tokenizer_config.json` (lowercasing, accents, prefix space) and registers the special tokens.
This module does the same with the `tokenizers` library alone, so a model can be prepared without
transformers and still tokenize exactly as the reference pipeline does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TokenizerBuildError

WORDPIECE_FILES = ("vocab.txt",)
BPE_FILES = ("vocab.json", "merges.txt")

# The special tokens of BertTokenizer and RobertaTokenizer when their configuration names none.
WORDPIECE_SPECIALS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
BPE_SPECIALS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}
# Model types whose slow tokenizer is BertTokenizer's WordPiece, or RobertaTokenizer's byte-level
# BPE: the conversions (and adjustments) this module reproduces.
WORDPIECE_MODEL_TYPES = ("bert", "mobilebert", "distilbert", "electra")
BPE_MODEL_TYPES = ("roberta",)
# The order in which transformers registers special tokens (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_ORDER = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")


@dataclass(frozen=True)
class TokenizerConfig:
    """tokenizer_config.json merged with special_tokens_map.json, as transformers reads them."""

    values: dict[str, Any]

    @classmethod
    def read(cls, folder: Path) -> TokenizerConfig:
        values: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = folder / name
            if path.is_file():
                try:
                    loaded = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as error:
                    raise TokenizerBuildError(f"{path} is not valid JSON: {error}") from error
                if not isinstance(loaded, dict):
                    raise TokenizerBuildError(f"{path} must hold a JSON object")
                # tokenizer_config.json, read last, wins, as in transformers.
                values.update(loaded)
        return cls(values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def special_token(self, key: str, defaults: dict[str, str]) -> tuple[str, dict[str, Any]]:
        """The token's text and its AddedToken flags given in the configuration, if any."""
        value = self.values.get(key, defaults.get(key))
        if isinstance(value, dict):
            flags = {k: value[k] for k in ("lstrip", "rstrip", "normalized") if k in value}
            return str(value["content"]), flags
        return str(value), {}


def tokenizer_kind(folder: Path) -> str | None:
    """'wordpiece' or 'bpe' for the slow-tokenizer files the folder has, None for neither."""
    if all((folder / name).is_file() for name in WORDPIECE_FILES):
        return "wordpiece"
    if all((folder / name).is_file() for name in BPE_FILES):
        return "bpe"
    return None


def build_tokenizer(folder: Path) -> Any:
    """A `tokenizers.Tokenizer` from the folder's vocab.txt, or vocab.json and merges.txt."""
    config = TokenizerConfig.read(folder)
    kind = tokenizer_kind(folder)
    if kind == "wordpiece":
        return _wordpiece(folder, config)
    if kind == "bpe":
        return _byte_level_bpe(folder, config)
    raise TokenizerBuildError(
        f"{folder} has no tokenizer.json and none of the files one is built from "
        "(vocab.txt for BERT-style models; vocab.json and merges.txt for RoBERTa-style ones)"
    )


def align_with_config(tokenizer: Any, folder: Path, model_type: str) -> Any:
    """`tokenizer` (read from tokenizer.json) as transformers adjusts it to tokenizer_config.json.

    Loading a tokenizer.json, transformers' fast tokenizer classes rewrite parts of it from the
    configuration, with their own defaults where it is silent: BERT-style classes set the
    normalizer's lowercasing, accent stripping and CJK splitting; every class sets the
    pre-tokenizer's add_prefix_space; RoBERTa's sets the post-processor's add_prefix_space and
    trim_offsets. The file alone would tokenize differently when they disagree.
    """
    from tokenizers import Tokenizer

    config = TokenizerConfig.read(folder)
    state = json.loads(tokenizer.to_str())
    changed = False

    def set_fields(component: str, wanted: dict[str, Any]) -> None:
        nonlocal changed
        part = state.get(component)
        if not isinstance(part, dict):
            return
        for key, value in wanted.items():
            if key in part and part[key] != value:
                part.update(wanted)
                changed = True
                return

    tokenizer_class = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    bert_like = tokenizer_class in (
        "",
        "BertTokenizer",
        "DistilBertTokenizer",
        "MobileBertTokenizer",
        "ElectraTokenizer",
    )
    if model_type in WORDPIECE_MODEL_TYPES and bert_like:
        set_fields(
            "normalizer",
            {
                "lowercase": bool(config.get("do_lower_case", True)),
                "strip_accents": config.get("strip_accents"),
                "handle_chinese_chars": bool(config.get("tokenize_chinese_chars", True)),
            },
        )
    add_prefix_space = bool(config.get("add_prefix_space", False))
    set_fields("pre_tokenizer", {"add_prefix_space": add_prefix_space})
    if model_type in BPE_MODEL_TYPES and tokenizer_class in ("", "RobertaTokenizer"):
        set_fields(
            "post_processor",
            {
                "add_prefix_space": add_prefix_space,
                "trim_offsets": bool(config.get("trim_offsets", True)),
            },
        )
    return Tokenizer.from_str(json.dumps(state)) if changed else tokenizer


def _wordpiece(folder: Path, config: TokenizerConfig) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = _read_wordpiece_vocab(folder / "vocab.txt")
    unk, _ = config.special_token("unk_token", WORDPIECE_SPECIALS)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    # BertTokenizerFast's defaults; its configuration overrides them.
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, _ = config.special_token("cls_token", WORDPIECE_SPECIALS)
    sep, _ = config.special_token("sep_token", WORDPIECE_SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, _token_id(vocab, cls)), (sep, _token_id(vocab, sep))],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    # BertTokenizer's special tokens match the raw text, before lowercasing.
    _add_special_tokens(tokenizer, config, WORDPIECE_SPECIALS, mask_like_a_word=False)
    return tokenizer


def _byte_level_bpe(folder: Path, config: TokenizerConfig) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TokenizerBuildError(f"{folder / 'vocab.json'} is not valid JSON: {error}") from error
    # As RobertaTokenizer reads the file: the first line is the "#version" header, and the last
    # line is taken to be the empty one after the final newline.
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]
    merges = [tuple(line.split()) for line in lines]
    if any(len(merge) != 2 for merge in merges):
        raise TokenizerBuildError(
            f"{folder / 'merges.txt'} has lines that are not two space-separated symbols"
        )
    add_prefix_space = bool(config.get("add_prefix_space", False))
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    cls, _ = config.special_token("cls_token", BPE_SPECIALS)
    sep, _ = config.special_token("sep_token", BPE_SPECIALS)
    tokenizer.post_processor = processors.RobertaProcessing(
        sep=(sep, _token_id(vocab, sep)),
        cls=(cls, _token_id(vocab, cls)),
        add_prefix_space=add_prefix_space,
        trim_offsets=bool(config.get("trim_offsets", True)),
    )
    _add_special_tokens(tokenizer, config, BPE_SPECIALS, mask_like_a_word=True)
    return tokenizer


def _read_wordpiece_vocab(path: Path) -> dict[str, int]:
    # As BertTokenizer's load_vocab: one token per line, its id the line number.
    vocab: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            vocab[line.rstrip("\n")] = index
    return vocab


def _token_id(vocab: dict[str, int], token: str) -> int:
    if token not in vocab:
        raise TokenizerBuildError(
            f"the special token {token!r} is not in the vocabulary; name the right one in "
            "tokenizer_config.json"
        )
    return vocab[token]


def _add_special_tokens(
    tokenizer: Any, config: TokenizerConfig, defaults: dict[str, str], mask_like_a_word: bool
) -> None:
    """Registers the special tokens with the flags transformers' slow tokenizer gives them.

    With `mask_like_a_word` (RobertaTokenizer) the mask token takes the space before it and the
    other tokens keep AddedToken's default of matching normalized text; otherwise (BertTokenizer)
    every special token matches the raw text.
    """
    from tokenizers import AddedToken

    tokens = []
    for key in (*SPECIAL_ORDER, "mask_token"):
        if key not in defaults and key not in config.values:
            continue
        content, given = config.special_token(key, defaults)
        is_mask = key == "mask_token"
        flags = {
            "lstrip": mask_like_a_word and is_mask,
            "normalized": mask_like_a_word and not is_mask,
            **given,
        }
        tokens.append(AddedToken(content, special=True, **flags))
    tokenizer.add_special_tokens(tokens)

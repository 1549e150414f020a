"""Builds a benchmark model: a real architecture, random weights, exported by `qa-worker export`.

No fine-tuned weights can be downloaded here. A model of the exact architecture costs the same
compute, so speed and memory measured on it are real; its answers are not meaningful.

    python -m benchmarks.build_model --arch mobilebert \\
        --tokenizer ../shared/tokenizers/bert-base-uncased --out models/mobilebert

writes the checkpoint to OUT-checkpoint and the exported model (fp32 and int8) to OUT.
Needs the `export` extra.

RoBERTa's byte-level BPE tokenizer cannot be downloaded here either. `--train-tokenizer FILE`
trains one of the same form (byte-level BPE, RoBERTa's special tokens and template, 50,265
tokens) on the text of a SQuAD or JSONL file and uses it:

    python -m benchmarks.build_model --arch roberta-base \\
        --train-tokenizer ../shared/data/squad-v2-dev-half.json --out models/roberta-base

Trained on the very text it then tokenizes, it splits that text into fewer tokens than
RoBERTa's own tokenizer would, so windows come out somewhat shorter than with the real model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from parity.roberta_tokenizer import byte_level_bpe_tokenizer
from worker.model.export import export_model
from worker.squad import read_questions

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


ROBERTA_VOCAB_SIZE = 50_265


def train_roberta_tokenizer(text_file: Path, folder: Path) -> None:
    """Saves a RoBERTa-style tokenizer trained on the questions and contexts of `text_file`."""
    from transformers import RobertaTokenizerFast

    records = read_questions(text_file)
    contexts = dict.fromkeys(record.context for record in records)
    corpus = [*contexts, *(record.question for record in records)]
    tokenizer = byte_level_bpe_tokenizer(corpus, ROBERTA_VOCAB_SIZE)
    # RoBERTa's positions run to 514 with 2 reserved, so 512 tokens a sequence.
    fast = RobertaTokenizerFast(tokenizer_object=tokenizer, model_max_length=512)
    fast.save_pretrained(folder)


def build_checkpoint(arch: str, tokenizer: Path, folder: Path, seed: int) -> None:
    import torch
    from transformers import (
        MobileBertConfig,
        MobileBertForQuestionAnswering,
        RobertaConfig,
        RobertaForQuestionAnswering,
    )

    torch.manual_seed(seed)
    if arch == "mobilebert":
        # The defaults are the architecture of google/mobilebert-uncased and its SQuAD fine-tunes.
        model = MobileBertForQuestionAnswering(MobileBertConfig())
    elif arch == "roberta-base":
        vocab_size = Tokenizer.from_file(str(tokenizer / "tokenizer.json")).get_vocab_size()
        model = RobertaForQuestionAnswering(RobertaConfig(vocab_size=vocab_size))
    else:
        raise SystemExit(f"unknown --arch {arch}: use mobilebert or roberta-base")
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("mobilebert", "roberta-base"), default="mobilebert")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", type=Path, help="tokenizer folder")
    source.add_argument(
        "--train-tokenizer",
        type=Path,
        metavar="FILE",
        help="train a RoBERTa-style tokenizer on this SQuAD or JSONL file (into OUT-tokenizer)",
    )
    parser.add_argument("--out", type=Path, required=True, help="exported model folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoint = args.out.with_name(args.out.name + "-checkpoint")
    tokenizer = args.tokenizer
    if args.train_tokenizer is not None:
        tokenizer = args.out.with_name(args.out.name + "-tokenizer")
        train_roberta_tokenizer(args.train_tokenizer, tokenizer)
    build_checkpoint(args.arch, tokenizer, checkpoint, args.seed)
    export_model(str(checkpoint), args.out, quantize="int8")
    print(f"checkpoint {checkpoint}, model {args.out}")


if __name__ == "__main__":
    main()

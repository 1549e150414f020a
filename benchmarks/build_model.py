"""Builds a benchmark model: a real architecture, random weights, exported by `qa-worker export`.

No fine-tuned weights can be downloaded here. A model of the exact architecture costs the same
compute, so speed and memory measured on it are real; its answers are not meaningful.

    python benchmarks/build_model.py --arch mobilebert \\
        --tokenizer ../shared/tokenizers/bert-base-uncased --out models/mobilebert

writes the checkpoint to OUT-checkpoint and the exported model (fp32 and int8) to OUT.
Needs the `export` extra.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from worker.export import export_model

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


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
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    parser.add_argument("--out", type=Path, required=True, help="exported model folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoint = args.out.with_name(args.out.name + "-checkpoint")
    build_checkpoint(args.arch, args.tokenizer, checkpoint, args.seed)
    export_model(str(checkpoint), args.out, quantize="int8")
    print(f"checkpoint {checkpoint}, model {args.out}")


if __name__ == "__main__":
    main()

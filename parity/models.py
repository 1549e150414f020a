"""Small random-weight extractive QA checkpoints, saved as Hugging Face checkpoint folders.

No model hub is reachable from the tests, so each architecture the worker supports is built here:
a tokenizer trained on the corpus below and a two-layer model with seeded random weights. The
folders look like real checkpoints (config.json, model.safetensors, tokenizer.json and
tokenizer_config.json), so `export_model` and the reference pipeline load them as they would load
a downloaded model.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

KINDS = ("bert", "mobilebert", "roberta", "distilbert")
MODEL_MAX_LENGTH = 512
VOCAB_SIZE = 2000

# Target standard deviation of the start and end logits over real tokens. Freshly initialised
# weights give near-constant logits, so every span would score about the same and the best answer
# would be decided by rounding; a spread this wide makes rankings stable yet leaves several
# plausible spans per window.
LOGIT_STD = 4.0

CORPUS = (
    "The Amazon rainforest covers much of the Amazon basin of South America.",
    "Marie Curie was the first person to win two Nobel Prizes, in physics and in chemistry.",
    "The Eiffel Tower was completed in 1889 and is 330 metres tall.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Kafka is a distributed event streaming platform used for high-performance data pipelines.",
    "The worker reads questions from a topic and writes answers to another topic.",
    "Each answer carries a score, the start and end offsets, and the text of the span.",
    "Mount Everest is the highest mountain above sea level, at 8,849 metres.",
    "The Great Wall of China is more than 21,000 kilometres long.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Who wrote the novel? It was written by Jane Austen in 1813.",
    "When did the first moon landing happen? Apollo 11 landed on 20 July 1969.",
    "What is the capital of Australia? The capital is Canberra, not Sydney.",
    "How many players are on a football team? Eleven players start each match.",
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Our order number is 4521-B and the invoice total was $1,234.56 (tax included).",
    "Email support@example.com or call +1 (555) 010-9999 between 9:00 and 17:30.",
    "Version 2.3.1 fixed a crash when the context was empty; see issue #42.",
    'She said: "I\'ll be there at noon," but arrived at half past one.',
    "Rust, Go, Python and Java are popular programming languages.",
    "Le café de la gare est fermé le dimanche, mais la crêperie reste ouverte.",
    "François a étudié à l'université de Genève pendant trois années.",
    "El niño comió una manzana en la mañana del miércoles.",
    "Die Straße in München ist über fünf Kilometer lang und sehr schön.",
    "São Paulo é a maior cidade do Brasil, com milhões de habitantes.",
    "Smörgåsbord och kanelbullar serveras på fredagar i Göteborg.",
    "Zoë and Chloé visited the Ångström laboratory in Uppsala.",
    "Dvořák composed the New World Symphony; Łódź and Kraków are in Poland.",
    "北京是中国的首都，也是一座历史悠久的城市。",  # noqa: RUF001
    "长城是世界上最长的建筑之一。",
    "東京は日本の首都で、人口が多い都市です。",
    "富士山は日本で一番高い山です。",
    "서울은 대한민국의 수도입니다.",
    "Москва — столица России, а Нева течёт через Санкт-Петербург.",  # noqa: RUF001
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",  # noqa: RUF001
    "The party was great 🎉 and everyone loved the cake 🍰!",
    "I love pizza 🍕 and coffee ☕ on rainy days 🌧️.",
    "Thumbs up 👍🏽 from the whole team 👩‍💻👨‍💻 after the release 🚀.",
    "The weather today: sunny ☀️, tomorrow: snow ❄️, then wind 🌬️.",
    "Tabs\tand  double  spaces   appear in messy real-world text.",
    "Numbers like 3.14159, 2.71828 and 1e-5 show up in scientific papers.",
    "The treaty was signed in Vienna on 9 June 1815 after long negotiations.",
    "Penguins live mostly in the Southern Hemisphere, especially in Antarctica.",
    "The heart pumps blood through the body using four chambers.",
    "Shakespeare wrote Hamlet, Macbeth, Othello and King Lear.",
    "The speed of light in vacuum is about 299,792 kilometres per second.",
    "A byte has eight bits, and a kilobyte has 1,024 bytes in binary usage.",
    "The river Nile flows north through Egypt into the Mediterranean Sea.",
)


def build_checkpoint(kind: str, folder: Path, seed: int = 0) -> Path:
    """Writes a random-weight QA checkpoint of `kind` into `folder` and returns the folder."""
    import torch

    try:
        tokenizer_builder, model_builder = _BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose from {KINDS}") from None
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer_builder()
    torch.manual_seed(seed)
    model = model_builder(tokenizer)
    model.eval()
    _spread_logits(model, tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _wordpiece_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = _train_wordpiece_vocab(tokenizer, CORPUS, specials, VOCAB_SIZE)
    tokenizer.model = models.WordPiece(vocab, unk_token="[UNK]")
    tokenizer.add_special_tokens(specials)
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def _train_wordpiece_vocab(
    tokenizer: Tokenizer, corpus: Sequence[str], specials: list[str], vocab_size: int
) -> dict[str, int]:
    """A WordPiece vocabulary learnt from `corpus` by byte-pair merges, in a fixed order.

    tokenizers' WordPieceTrainer cannot be used: it numbers the "##" continuation symbols in the
    order it walks a Rust HashMap of words, whose seed is random in every process, and breaks
    ties between equally frequent pairs by those numbers. On a corpus this small most merges are
    ties, so each process learnt another vocabulary (1,226 to 1,231 tokens, different tokens);
    the embedding matrix changed size and with it every seeded weight drawn after it, so each
    test session tested another random model. (The byte-level BPE trainer has no continuation
    symbols and is deterministic.) This is the trainer's algorithm with every symbol numbered in
    a fixed order: specials, the corpus's characters by code point, the "##" forms of those that
    continue a word likewise, then merges of the most frequent adjacent pair, a tie going to the
    pair of lower numbers, each merge applied to every word at once.
    """
    words: Counter[str] = Counter()
    for text in corpus:
        normalized = tokenizer.normalizer.normalize_str(text)
        words.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    initials = sorted({char for word in words for char in word})
    continuations = sorted({f"##{char}" for word in words for char in word[1:]})
    vocab = {token: index for index, token in enumerate(specials)}
    for token in [*initials, *continuations]:
        vocab.setdefault(token, len(vocab))
    spellings = [[word[0], *(f"##{char}" for char in word[1:])] for word in words]
    frequency = list(words.values())
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for index, symbols in enumerate(spellings):
        for pair in itertools.pairwise(symbols):
            pair_counts[pair] += frequency[index]
            where.setdefault(pair, set()).add(index)
    # Most frequent first, then the pair of lower ids; stale entries are skipped when popped.
    queue = [(-count, vocab[a], vocab[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(queue)
    while queue and len(vocab) < vocab_size:
        negative_count, _, _, left, right = heapq.heappop(queue)
        if pair_counts[left, right] != -negative_count or negative_count == 0:
            continue
        merged = left + right.removeprefix("##")
        vocab.setdefault(merged, len(vocab))
        touched: set[tuple[str, str]] = set()
        for index in sorted(where.pop((left, right))):
            symbols = spellings[index]
            for pair in itertools.pairwise(symbols):
                pair_counts[pair] -= frequency[index]
            joined: list[str] = []
            for symbol in symbols:
                if joined and joined[-1] == left and symbol == right:
                    joined[-1] = merged
                else:
                    joined.append(symbol)
            spellings[index] = joined
            for pair in itertools.pairwise(joined):
                pair_counts[pair] += frequency[index]
                where.setdefault(pair, set()).add(index)
                touched.add(pair)
        for a, b in sorted(touched):
            if pair_counts[a, b] > 0:
                heapq.heappush(queue, (-pair_counts[a, b], vocab[a], vocab[b], a, b))
    return vocab


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    from transformers import BertTokenizerFast

    return BertTokenizerFast(
        tokenizer_object=_wordpiece_tokenizer(), model_max_length=MODEL_MAX_LENGTH
    )


def _distilbert_tokenizer() -> PreTrainedTokenizerFast:
    # Same vocabulary and rules as BERT, but DistilBERT's tokenizer class does not emit
    # token_type_ids: the reference pipeline passes every tokenizer output to the model, and
    # DistilBERT's forward takes no token_type_ids.
    from transformers import DistilBertTokenizerFast

    return DistilBertTokenizerFast(
        tokenizer_object=_wordpiece_tokenizer(), model_max_length=MODEL_MAX_LENGTH
    )


def _roberta_tokenizer() -> PreTrainedTokenizerFast:
    from transformers import RobertaTokenizerFast

    from parity.roberta_tokenizer import byte_level_bpe_tokenizer

    tokenizer = byte_level_bpe_tokenizer(CORPUS, VOCAB_SIZE)
    return RobertaTokenizerFast(tokenizer_object=tokenizer, model_max_length=MODEL_MAX_LENGTH)


def _bert_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=MODEL_MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForQuestionAnswering(config)


def _mobilebert_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import MobileBertConfig, MobileBertForQuestionAnswering

    # The bottleneck sizes must agree: with use_bottleneck the attention runs at
    # intra_bottleneck_size, which must equal true_hidden_size.
    config = MobileBertConfig(
        vocab_size=len(tokenizer),
        embedding_size=32,
        hidden_size=64,
        intra_bottleneck_size=32,
        true_hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        num_feedforward_networks=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
    )
    return MobileBertForQuestionAnswering(config)


def _distilbert_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=64,
        n_layers=2,
        n_heads=4,
        hidden_dim=128,
        max_position_embeddings=MODEL_MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
    )
    return DistilBertForQuestionAnswering(config)


def _roberta_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import RobertaConfig, RobertaForQuestionAnswering

    # RoBERTa numbers positions from pad_token_id + 1, hence two extra position embeddings.
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=MODEL_MAX_LENGTH + 2,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return RobertaForQuestionAnswering(config)


def _spread_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Redraws the qa_outputs head so start and end logits have a standard deviation of LOGIT_STD.

    The logits are linear in the head's weights (the bias is zeroed), so one forward pass over a
    sample of the corpus tells how much to scale each row.

    The start logit reads the even hidden units and the end logit the odd ones. ONNX Runtime's
    int8 product on x86 CPUs without VNNI (AVX2: vpmaddubsw) adds the products of neighbouring
    inputs k and k+1 in 16 bits and saturates when both are large: a uint8 activation up to 255
    times an int8 weight up to 127, twice, exceeds 32,767. A dense random head has many
    neighbouring weights near the tensor's largest, and a tiny random model's final hidden
    states spread evenly over their quantization range, so on such CPUs a few clipped sums
    moved the int8 logits of some seeds by more than half their spread (2.5 against a
    tolerance of 2.1), and the export check rightly refused them. With one of every two
    neighbouring weights zero, no sum can saturate (255 * 127 = 32,385); the export check still
    compares every int8 export with PyTorch, so a saturating real model is still refused.
    """
    import torch

    head = cast("torch.nn.Linear", model.qa_outputs)
    sample = tokenizer(list(CORPUS[:16]), list(CORPUS[16:32]), padding=True, return_tensors="pt")
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0)
        head.weight[0, 1::2] = 0.0
        head.weight[1, 0::2] = 0.0
        head.bias.zero_()
        output = model(**sample)
        real = sample["attention_mask"].bool()
        for row, logits in enumerate((output.start_logits, output.end_logits)):
            head.weight[row] *= LOGIT_STD / logits[real].std()


_BUILDERS: dict[
    str,
    tuple[
        Callable[[], PreTrainedTokenizerFast],
        Callable[[PreTrainedTokenizerFast], PreTrainedModel],
    ],
] = {
    "bert": (_bert_tokenizer, _bert_model),
    "mobilebert": (_bert_tokenizer, _mobilebert_model),
    "roberta": (_roberta_tokenizer, _roberta_model),
    "distilbert": (_distilbert_tokenizer, _distilbert_model),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Writes a small QA checkpoint with random weights, to try the worker without "
        "the Hub: `qa-worker export` prepares it like a downloaded one. Its answers are arbitrary."
    )
    parser.add_argument("--kind", choices=KINDS, default="mobilebert", help="architecture")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    print(build_checkpoint(args.kind, args.out, args.seed))


if __name__ == "__main__":
    main()

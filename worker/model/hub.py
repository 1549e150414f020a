"""Checkpoints from the Hugging Face Hub: only the files an export needs, into the standard cache.

huggingface_hub keeps downloads in its cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub),
reads HF_TOKEN for private repositories and, with HF_HUB_OFFLINE=1, serves a revision from that
cache without touching the network.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath

from ..errors import SetupError
from .onnx_source import ONNX_LOCATIONS

# Configuration and tokenizer files: small, and needed whichever way the model is prepared.
CONFIG_PATTERNS = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
]
# An ONNX model and its side file of weights (ONNX exporters name it either way).
ONNX_PATTERNS = [
    f"{location}{suffix}" for location in ONNX_LOCATIONS for suffix in ("", "_data", ".data")
]
WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
PICKLE_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


class HubError(SetupError):
    """The checkpoint could not be had from the Hub; the message says how to pass a folder."""


def looks_like_hub_id(source: str) -> bool:
    """`org/name` or `name`: not a path anyone would type for a local folder."""
    if source.startswith((".", "~", "/")) or source.count("/") > 1 or not source:
        return False
    return all(part and part not in (".", "..") for part in source.split("/"))


def files_to_download(repo_files: list[str], allow_pickle: bool) -> list[str]:
    """The files of a repository an export reads: its ONNX model when it has one, else weights.

    A repository often carries the same model several times (PyTorch, TensorFlow, ONNX in
    several precisions); only one copy is fetched, the ONNX one first since it needs no torch.
    """
    configs = _matching(repo_files, CONFIG_PATTERNS)
    for location in ONNX_LOCATIONS:
        if location in repo_files:
            side = [name for name in repo_files if name in (f"{location}_data", f"{location}.data")]
            return [*configs, location, *side]
    weights = _matching(repo_files, WEIGHT_PATTERNS)
    if not weights and allow_pickle:
        weights = _matching(repo_files, PICKLE_PATTERNS)
    return configs + weights


def _matching(names: list[str], patterns: list[str]) -> list[str]:
    # Configuration and weights live at the repository root; subfolders hold other variants.
    return [
        name
        for name in names
        if PurePosixPath(name).parent == PurePosixPath(".")
        and any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
    ]


def download_checkpoint(
    repo_id: str, revision: str | None, allow_pickle: bool, progress: bool
) -> Path:
    """The local folder of `repo_id` at `revision`, downloaded into the Hub cache if need be."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    if not progress:
        # huggingface_hub draws its own download bars; without a terminal they are only noise.
        disable_progress_bars()

    local_hint = (
        f"download it on a machine with Hub access (`huggingface-cli download {repo_id} "
        f"--local-dir DIR`), copy DIR here, then run `qa-worker export --model DIR --out FOLDER` "
        "and pass FOLDER as --model"
    )
    try:
        if constants.HF_HUB_OFFLINE:
            # No listing offline: take whatever the cached snapshot holds of the candidates.
            patterns = CONFIG_PATTERNS + ONNX_PATTERNS + WEIGHT_PATTERNS
            patterns += PICKLE_PATTERNS if allow_pickle else []
        else:
            listed = huggingface_hub.list_repo_files(repo_id, revision=revision)
            patterns = files_to_download(listed, allow_pickle)
        folder = huggingface_hub.snapshot_download(
            repo_id=repo_id, revision=revision, allow_patterns=patterns
        )
    except Exception as error:
        offline = (
            " (HF_HUB_OFFLINE is set and the Hub cache has no copy)"
            if constants.HF_HUB_OFFLINE
            else ""
        )
        raise HubError(
            f"downloading {repo_id!r}{f' at revision {revision}' if revision else ''} from the "
            f"Hugging Face Hub failed{offline} ({type(error).__name__}: {error}); for a private "
            f"repository set HF_TOKEN; to use a local folder instead, {local_hint}"
        ) from error
    return Path(folder)

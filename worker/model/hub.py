"""Checkpoints from the Hugging Face Hub: only the files an export needs, into the standard cache.

huggingface_hub keeps downloads in its cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub),
reads HF_TOKEN for private repositories and, with HF_HUB_OFFLINE=1, serves a revision from that
cache without touching the network.
"""

from __future__ import annotations

import fnmatch
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ..errors import HubError, HubUnreachable
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
# What the offline recipe downloads: the configuration and tokenizer files, the ONNX model with
# its side file, and safetensors weights (for a repository without an ONNX model), nothing else.
RECIPE_PATTERNS = ("*.json", "*.txt", "*.model", "model.onnx*", "onnx/model.onnx*", "*.safetensors")


# A full commit id: a revision of this form needs no lookup, it cannot move.
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
# Asking which commit a revision is at happens on every run that loads a Hub id: a network that
# drops packets must cost seconds, then the cached commit, never a hang.
RESOLVE_TIMEOUT_S = 10.0


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


def is_commit(revision: str | None) -> bool:
    return revision is not None and COMMIT_ID.fullmatch(revision) is not None


def snapshot_commit(folder: Path) -> str:
    """The commit of a folder `download_checkpoint` returned: the Hub cache names it so."""
    return folder.name


def resolve_commit(repo_id: str, revision: str | None) -> str:
    """The commit `revision` (default: main) of `repo_id` points to on the Hub now.

    Raises HubUnreachable when the Hub cannot be asked, HubError when it says no.
    """
    import huggingface_hub
    import requests
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if is_commit(revision):
        return str(revision)
    if constants.HF_HUB_OFFLINE:
        raise HubUnreachable("HF_HUB_OFFLINE is set")
    try:
        info = huggingface_hub.model_info(repo_id, revision=revision, timeout=RESOLVE_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        at = f" at revision {revision}" if revision else ""
        raise HubError(
            f"the Hugging Face Hub has no {repo_id!r}{at} ({type(error).__name__}); check the "
            "id, and set HF_TOKEN for a private repository"
        ) from error
    except (requests.ConnectionError, requests.Timeout, requests.HTTPError) as error:
        raise HubUnreachable(failure_cause(error).words) from error
    return str(info.sha)


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit the Hub cache has `revision` of `repo_id` at, when it has one."""
    from huggingface_hub import constants

    if is_commit(revision):
        return revision
    ref = (
        Path(constants.HF_HUB_CACHE)
        / f"models--{repo_id.replace('/', '--')}"
        / "refs"
        / (revision or "main")
    )
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
    return commit if is_commit(commit) else None


def download_checkpoint(
    repo_id: str,
    revision: str | None,
    allow_pickle: bool,
    progress: bool,
    weights_only: bool = False,
) -> Path:
    """The local folder of `repo_id` at `revision`, downloaded into the Hub cache if need be.

    The folder is the Hub cache's snapshot, named by its commit (`snapshot_commit`). With
    `weights_only` the configuration and weights are fetched even when the repository ships an
    ONNX model, for preparing from the weights when that model does not fit.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    if not progress:
        # huggingface_hub draws its own download bars; without a terminal they are only noise.
        disable_progress_bars()

    try:
        if constants.HF_HUB_OFFLINE:
            # No listing offline: take whatever the cached snapshot holds of the candidates.
            patterns = CONFIG_PATTERNS + ONNX_PATTERNS + WEIGHT_PATTERNS
            patterns += PICKLE_PATTERNS if allow_pickle else []
        else:
            listed = huggingface_hub.list_repo_files(repo_id, revision=revision)
            if weights_only:
                listed = [name for name in listed if name not in ONNX_LOCATIONS]
            patterns = files_to_download(listed, allow_pickle)
        folder = huggingface_hub.snapshot_download(
            repo_id=repo_id, revision=revision, allow_patterns=patterns
        )
    except Exception as error:
        raise HubError(
            download_failure(repo_id, revision, error, constants.HF_HUB_OFFLINE)
        ) from error
    return Path(folder)


@dataclass(frozen=True)
class FailureCause:
    """Why the Hub could not serve a request, in a few words, and what kind of failure it was."""

    words: str
    # A token (HF_TOKEN) could help: the Hub refused, or hid, what it was asked for.
    token_helps: bool = False
    # The repository or revision does not exist as named: no download elsewhere would help.
    not_found: bool = False


def failure_cause(error: BaseException) -> FailureCause:
    """The cause of a failed Hub request, from the exception and the ones it wraps.

    requests wraps urllib3's errors (MaxRetryError around NameResolutionError, ...), whose text is
    a long nested repr; the cause is read from their types instead.
    """
    import requests
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from urllib3.exceptions import (
        NameResolutionError,
        NewConnectionError,
        ProxyError,
        SSLError,
    )
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    host = urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT
    chain = _wrapped(error)
    # Ordered: a NameResolutionError is a NewConnectionError, which is a timeout error in urllib3.
    network = (
        ((NameResolutionError, socket.gaierror), f"the name {host} does not resolve (no DNS)"),
        ((ProxyError, requests.exceptions.ProxyError), "the proxy (HTTPS_PROXY) failed"),
        (
            (SSLError, ssl.SSLError, requests.exceptions.SSLError),
            f"TLS with {host} failed (a proxy's certificate? set REQUESTS_CA_BUNDLE)",
        ),
        ((ConnectionRefusedError,), f"{host} refused the connection"),
        ((NewConnectionError, ConnectionError), f"{host} cannot be connected to"),
        ((Urllib3Timeout, requests.Timeout, TimeoutError), f"{host} did not answer in time"),
        ((requests.ConnectionError,), f"{host} cannot be reached"),
    )
    for kinds, words in network:
        if any(isinstance(item, kinds) for item in chain):
            return FailureCause(words)
    for item in chain:
        if isinstance(item, GatedRepoError):
            return FailureCause(
                "the repository is gated: accept its terms on the Hub, then set HF_TOKEN",
                token_helps=True,
            )
        if isinstance(item, RevisionNotFoundError):
            return FailureCause("the repository has no such revision", not_found=True)
        if isinstance(item, RepositoryNotFoundError):
            return FailureCause(
                "no such repository, or it is private", token_helps=True, not_found=True
            )
        status = getattr(getattr(item, "response", None), "status_code", None)
        if isinstance(status, int):
            if status in (401, 403, 429):
                return FailureCause(
                    f"the Hub refused the request (HTTP {status})", token_helps=True
                )
            return FailureCause(f"the Hub answered HTTP {status}")
    first_line = (str(error).splitlines() or [""])[0]
    return FailureCause(f"{type(error).__name__}: {first_line[:160]}")


def _wrapped(error: BaseException) -> list[BaseException]:
    """`error` and every exception it wraps: causes, contexts, exception arguments and urllib3's
    `reason`, each once."""
    found: list[BaseException] = []
    pending = [error]
    while pending and len(found) < 32:
        item = pending.pop(0)
        if any(item is seen for seen in found):
            continue
        found.append(item)
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        pending += [link for link in linked if isinstance(link, BaseException)]
    return found


def download_failure(
    repo_id: str, revision: str | None, error: BaseException, offline: bool
) -> str:
    """One line: what could not be downloaded, the cause in a few words, and the fix."""
    at = f" at revision {revision}" if revision else ""
    what = f"cannot download {repo_id!r}{at} from the Hugging Face Hub"
    if offline:
        return (
            f"{what}: HF_HUB_OFFLINE is set and the Hub cache has no copy. Unset HF_HUB_OFFLINE, "
            f"or without the Hub: {offline_recipe(repo_id, revision)}"
        )
    cause = failure_cause(error)
    token = "; for a private or gated one, set HF_TOKEN" if cause.token_helps else ""
    if cause.not_found:
        return f"{what}: {cause.words}. Check the id{token}"
    return f"{what}: {cause.words}{token}. Without the Hub: {offline_recipe(repo_id, revision)}"


def offline_recipe(repo_id: str, revision: str | None) -> str:
    """How to prepare the model on a machine that reaches the Hub, fetching only what is used."""
    at = f" --revision {revision}" if revision else ""
    patterns = " ".join(f"'{pattern}'" for pattern in RECIPE_PATTERNS)
    return (
        f"on a machine that reaches it, `hf download {repo_id}{at} --include {patterns} "
        "--local-dir DIR`; copy DIR here, run `qa-worker export --model DIR --out FOLDER` and "
        "pass --model FOLDER"
    )

"""A Hub id where a prepared model folder is expected: prepared once into a cache, then reused.

`--model ORG/NAME` on a command that loads a model, and `demo` without `--model`, prepare the
repository (int8, through `export_model`, so from its ONNX file without torch when it ships one)
into `<cache>/ORG--NAME/<commit>`, keyed by the commit the revision (default main) resolved to,
and load that folder on later runs. Each run asks the Hub which commit the revision is at now
(one small request), so a revision that moved is prepared afresh; when the Hub cannot be asked
(HF_HUB_OFFLINE=1, no network) the commit prepared last for that revision is used, and the log
says which. `<cache>/ORG--NAME/refs/<revision>` records that commit. The cache is the worker's
own: a prepared folder whose files no longer match their checksums is prepared again. The cache
defaults to `$XDG_CACHE_HOME/kafka-qa-worker/models` (~/.cache/...).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import HubUnreachable, ModelFolderError
from .hub import (
    cached_commit,
    download_checkpoint,
    is_commit,
    looks_like_hub_id,
    resolve_commit,
    snapshot_commit,
)
from .manifest import MANIFEST_NAME, Manifest, changed_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "csarron/mobilebert-uncased-squad-v2"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kafka-qa-worker" / "models"


def repo_folder(repo_id: str, cache: Path | None) -> Path:
    # "--" cannot occur in a Hub id, "/" cannot in a folder name.
    return (cache or default_cache()) / repo_id.replace("/", "--")


def cached_folder(repo_id: str, commit: str, cache: Path | None) -> Path:
    """One folder per repository and commit."""
    return repo_folder(repo_id, cache) / commit


def model_folder(model: Path, revision: str | None, cache: Path | None, progress: bool) -> Path:
    """`model` itself when it is a folder (or no Hub id); else its prepared copy in the cache."""
    if model.exists() or not looks_like_hub_id(str(model)):
        return model
    repo_id = str(model)
    commit = _commit_to_use(repo_id, revision, cache, progress)
    folder = cached_folder(repo_id, commit, cache)
    named = f"{repo_id}@{commit}"
    if (folder / MANIFEST_NAME).is_file():
        changed = _changed(folder)
        if changed is None:
            log.info("using %s prepared earlier in %s", named, folder)
            _record(repo_id, revision, commit, cache)
            return folder
        # The folder is the cache's own, not something the user made: preparing it again is
        # the fix, not an error to hand them.
        log.warning(
            "%s in %s is not as it was prepared (missing, changed, or of another format); "
            "preparing %s again",
            changed,
            folder,
            named,
        )
    from .export import export_model

    log.warning("preparing %s (int8) into %s", named, folder)
    export_model(repo_id, folder, quantize="int8", revision=commit, progress=progress)
    _record(repo_id, revision, commit, cache)
    log.warning("prepared %s into %s; later runs reuse it", named, folder)
    return folder


def _changed(folder: Path) -> str | None:
    """The first file of a prepared folder that differs from its manifest, or None."""
    try:
        manifest = Manifest.read(folder)
    except ModelFolderError:
        # A manifest this version cannot read (another format): as stale as a changed file.
        return MANIFEST_NAME
    return changed_file(folder, manifest)


def _commit_to_use(repo_id: str, revision: str | None, cache: Path | None, progress: bool) -> str:
    """The commit `revision` is at on the Hub, or, when the Hub cannot be asked, the one known."""
    name = revision or "main"
    recorded = _recorded(repo_id, revision, cache)
    try:
        commit = resolve_commit(repo_id, revision)
    except HubUnreachable as reason:
        known = recorded or cached_commit(repo_id, revision)
        if known is None:
            # Nothing known locally: the download says why it cannot be had, and what to do.
            return snapshot_commit(download_checkpoint(repo_id, revision, False, progress))
        if not is_commit(revision):
            where = "prepared last" if known == recorded else "in the Hugging Face cache"
            log.warning(
                "cannot ask the Hub which commit %s of %s is at (%s): using %s, the commit %s",
                name,
                repo_id,
                reason,
                known,
                where,
            )
        return known
    if recorded is not None and recorded != commit:
        log.warning(
            "%s of %s moved from %s to %s: preparing the new commit",
            name,
            repo_id,
            recorded,
            commit,
        )
    return commit


def _ref_file(repo_id: str, revision: str | None, cache: Path | None) -> Path:
    return repo_folder(repo_id, cache) / "refs" / (revision or "main")


def _recorded(repo_id: str, revision: str | None, cache: Path | None) -> str | None:
    if is_commit(revision):
        return revision
    ref = _ref_file(repo_id, revision, cache)
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
    prepared = (
        is_commit(commit) and (cached_folder(repo_id, commit, cache) / MANIFEST_NAME).is_file()
    )
    return commit if prepared else None


def _record(repo_id: str, revision: str | None, commit: str, cache: Path | None) -> None:
    if is_commit(revision):
        return
    ref = _ref_file(repo_id, revision, cache)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit + "\n", encoding="utf-8")

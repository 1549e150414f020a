"""A Hub id where a prepared model folder is expected: prepared once into a cache, then reused.

`--model ORG/NAME` on a command that loads a model, and `demo` without `--model`, prepare the
repository (int8, through `export_model`, so from its ONNX file without torch when it ships one)
into `<cache>/ORG--NAME/<revision>`, and load that folder on every later run without contacting
the Hub. The cache defaults to `$XDG_CACHE_HOME/kafka-qa-worker/models` (~/.cache/...).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .hub import looks_like_hub_id
from .manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

DEFAULT_MODEL = "csarron/mobilebert-uncased-squad-v2"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kafka-qa-worker" / "models"


def cached_folder(repo_id: str, revision: str | None, cache: Path | None) -> Path:
    # One folder per repository and revision; "--" cannot occur in a Hub id, "/" cannot in a name.
    return (cache or default_cache()) / repo_id.replace("/", "--") / (revision or "main")


def model_folder(model: Path, revision: str | None, cache: Path | None, progress: bool) -> Path:
    """`model` itself when it is a folder (or no Hub id); else its prepared copy in the cache."""
    if model.exists() or not looks_like_hub_id(str(model)):
        return model
    repo_id = str(model)
    folder = cached_folder(repo_id, revision, cache)
    if (folder / MANIFEST_NAME).is_file():
        log.info("using %s prepared earlier in %s", repo_id, folder)
        return folder
    from .export import export_model

    log.warning("preparing %s (int8) into %s; later runs reuse it", repo_id, folder)
    export_model(repo_id, folder, quantize="int8", revision=revision, progress=progress)
    return folder

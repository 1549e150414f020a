"""What a command's settings name, checked before the command starts: one line for the first fault.

`qa-worker` runs `check_settings` on the settings of the groups a command takes, before its body
imports the runtime, loads a model or connects, so a setting that cannot work fails in one line
naming it (`--ssl-cafile / QA_SSL_CAFILE: ...`) and exit code 2, with nothing logged before it:

- `model`: a folder that exists, can be read and holds a manifest this worker reads, with the
  precision asked for; or a Hub id (ORG/NAME), whose model cache must be a folder it can write.
- `tagging`: the question-set file can be read (its content is checked when it is loaded, before
  the worker connects).
- `kafka`: the TLS context builds from its files and a SASL protocol has its login
  (`worker.client_security`).
- `worker`: the process may open MIN_OPEN_FILES files (RLIMIT_NOFILE's soft limit): the worker
  keeps about 20 open when idle, more with every broker it talks to, and its HTTP server may take
  half the limit, so below it the worker runs out of file descriptors where nothing can name it
  (a Kafka client's thread dies with EMFILE, and the worker neither joins its group nor exits).

The command still meets every fault these miss (a model file changed since it was prepared, a
question set that does not parse) where it loads what the setting names, as a one-line error.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
from collections.abc import Collection
from pathlib import Path

from .client_security import client_ssl_context, read_setting_file, sasl_login, shown_path
from .config import Settings, describe
from .errors import ConfigError, ModelFolderError
from .model.cache import default_cache
from .model.hub import looks_like_hub_id
from .model.manifest import MANIFEST_NAME, Manifest, file_access

__all__ = ["MIN_OPEN_FILES", "check_open_file_limit", "check_settings"]

MIN_OPEN_FILES = 128


def check_settings(settings: Settings, groups: Collection[str]) -> None:
    """Raises ConfigError for the first setting of `groups` that names what cannot serve."""
    if "model" in groups and settings.model is not None:
        _check_model(settings, settings.model)
    if "tagging" in groups and settings.question_sets is not None:
        read_setting_file("question_sets", settings.question_sets)
    if "kafka" in groups:
        client_ssl_context(settings)
        if "SASL" in settings.security_protocol:
            sasl_login(settings)
    if "worker" in groups:
        check_open_file_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def check_open_file_limit(soft_limit: int) -> None:
    """Raises ConfigError when `soft_limit` (RLIMIT_NOFILE's) is below MIN_OPEN_FILES."""
    if soft_limit != resource.RLIM_INFINITY and soft_limit < MIN_OPEN_FILES:
        raise ConfigError(
            f"the open-file limit is {soft_limit} (RLIMIT_NOFILE), below the {MIN_OPEN_FILES} "
            "the worker needs for its own files, its Kafka sockets and its HTTP connections; "
            f"raise it (ulimit -n {MIN_OPEN_FILES} or more)"
        )


def _check_model(settings: Settings, model: Path) -> None:
    where = f"{describe('model')}: {shown_path(model)}"
    try:
        status = os.stat(model)
    except (FileNotFoundError, NotADirectoryError):
        # As the loader reads it: a path that does not exist and reads as ORG/NAME is a Hub id.
        if looks_like_hub_id(str(model)):
            _check_model_cache(settings.model_cache)
            return
        raise ConfigError(
            f"{where} does not exist: prepare it with `qa-worker export --model CHECKPOINT "
            f"--out {shown_path(model)}` (docs/models.md), or name a Hub model as ORG/NAME"
        ) from None
    except OSError as error:
        raise ConfigError(f"{where} cannot be read: {_failure(error)}") from None
    if not stat.S_ISDIR(status.st_mode):
        raise ConfigError(f"{where} is not a folder; give the folder `qa-worker export` wrote")
    try:
        with os.scandir(model):
            pass
        manifest = Manifest.read(model)
        manifest.onnx_path(model, settings.precision)
        # Opened, not read: a file this user may not read fails here in one line, naming it,
        # rather than as a traceback once the engine loads it. A missing one is the loader's to
        # report, with the checksums.
        for name in manifest.files_to_load(settings.precision):
            with contextlib.suppress(FileNotFoundError):
                (model / name).open("rb").close()
    except ModelFolderError as error:
        raise ConfigError(f"{describe('model')}: {error}") from None
    except PermissionError as error:
        unreadable = Path(error.filename) if error.filename else model
        raise ConfigError(
            f"{describe('model')}: {shown_path(unreadable)} cannot be read: permission denied "
            f"({file_access(unreadable)}); make it readable by this user (chmod a+r) or run as its "
            "owner"
        ) from None
    except OSError as error:
        raise ConfigError(f"{where} cannot be read: {_failure(error)}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        # A manifest.json that is not JSON or lacks a field (the error would quote its content).
        raise ConfigError(
            f"{where}: its {MANIFEST_NAME} is not a manifest `qa-worker export` wrote; prepare "
            "the folder again"
        ) from None


def _check_model_cache(cache: Path | None) -> None:
    """The cache a Hub id is prepared into (and whose refs every run records) must be writable."""
    name = "model_cache"
    folder = default_cache() if cache is None else cache
    where = (
        f"{describe(name)}: {shown_path(folder)}"
        if cache is not None
        else f"the default model cache {shown_path(folder)} (set {describe(name)})"
    )
    existing = folder
    try:
        # The folder, or the nearest folder above it that exists, where it would be created.
        while not os.path.lexists(existing) and existing.parent != existing:
            existing = existing.parent
        status = os.stat(existing)
    except OSError as error:
        raise ConfigError(f"{where} cannot be used: {_failure(error)}") from None
    if not stat.S_ISDIR(status.st_mode):
        what = (
            "is not a folder"
            if existing == folder
            else f"has a file above it, {shown_path(existing)}"
        )
        raise ConfigError(f"{where} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "cannot be written"
            if existing == folder
            else f"cannot be created in {shown_path(existing)}"
        )
        raise ConfigError(f"{where} {what}: permission denied")


def _failure(error: OSError) -> str:
    return "permission denied" if isinstance(error, PermissionError) else str(error.strerror)

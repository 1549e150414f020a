"""Custom resources checked against their CRDs' published schemas, with Node.js.

kubernetes-validate knows Kubernetes' own kinds only. For KEDA's and prometheus-operator's
(ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule) the npm packages of
kubernetes-models carry validators generated from those projects' CRDs; `crd_schemas/` pins them
(package-lock.json) and holds the script that runs them. They are installed once with `npm ci`
under $QA_TEST_CACHE (default ~/.cache/kafka-qa-worker-tests) and reused while the lock file is
the same. Node.js and npm come with every machine of this project's kind; elsewhere install them
(Debian: `apt-get install nodejs npm`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from parity.reference import cache_folder

PACKAGE = Path(__file__).with_name("crd_schemas")
FILES = ("package.json", "package-lock.json", "validate.mjs")
INSTALL_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120


class CrdValidationError(RuntimeError):
    """The validators could not be installed or run (not: an object is invalid)."""


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise CrdValidationError(
            f"{name} is not on PATH: the custom resources are validated with Node.js "
            "(Debian: apt-get install nodejs npm)"
        )
    return found


def installed() -> Path:
    """The folder with the pinned validators installed, installing them on first use."""
    digest = hashlib.sha256(b"".join((PACKAGE / name).read_bytes() for name in FILES)).hexdigest()
    cache = cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    folder = cache / "crd-schemas"
    marker = folder / "installed-from"
    # Another pytest process may be checking or installing the same folder: one at a time.
    with (cache / "crd-schemas.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == digest:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name in FILES:
            shutil.copy(PACKAGE / name, folder / name)
        # The packages declare Node.js 22 and run on 20, which this machine kind has.
        done = subprocess.run(
            [_tool("npm"), "ci", "--no-audit", "--no-fund", "--engine-strict=false"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise CrdValidationError(f"npm ci in {folder} failed:\n{done.stderr[-4000:]}")
        # Written last: an interrupted install has no marker and is done again.
        marker.write_text(digest)
    return folder


def crd_problems(objects: list[dict[str, Any]]) -> list[str | None]:
    """For each object, in order: None if its CRD's schema accepts it, else what is wrong."""
    folder = installed()
    done = subprocess.run(
        [_tool("node"), str(folder / "validate.mjs")],
        input=json.dumps(objects),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise CrdValidationError(f"validate.mjs failed (exit {done.returncode}):\n{done.stderr}")
    results = json.loads(done.stdout)
    if len(results) != len(objects):
        raise CrdValidationError(f"validate.mjs answered {len(results)} of {len(objects)} objects")
    return [result["error"] for result in results]

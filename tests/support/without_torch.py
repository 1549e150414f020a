"""Running `qa-worker` in a child interpreter where the export extra's packages cannot be imported.

The child's path finder is wrapped so that torch, transformers, onnxscript and safetensors are not
found, as if they were not installed (`importlib.util.find_spec` says None, `import torch` raises
ModuleNotFoundError), and the child fails if any was imported anyway by the time the command
returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
WITHOUT_TORCH = """
import sys
from importlib.machinery import PathFinder

# The export extra's own packages: none of them is in a runtime install.
BLOCKED = {"torch", "transformers", "onnxscript", "safetensors"}


class PathFinderWithoutTorch(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [PathFinderWithoutTorch if f is PathFinder else f for f in sys.meta_path]
try:
    import torch
except ImportError:
    pass
else:
    sys.exit("the import blocker let torch through")
from worker.cli import main

status = main(sys.argv[1:])
loaded = sorted(BLOCKED & {name.partition(".")[0] for name in sys.modules})
sys.exit(f"imported {loaded}" if loaded else status)
"""


def run_without_torch(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`qa-worker ARGS` without torch; the Hub is offline unless `env` says otherwise."""
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environ["HF_HUB_OFFLINE"] = "1"
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO_ROOT,
        timeout=timeout,
        check=False,
    )

"""The manifest of a prepared model folder: what `qa-worker export` wrote and what the engine loads.

A model folder holds one to three ONNX files (fp32; int8 and static int8 when asked for),
`tokenizer.json` and `manifest.json`. The manifest records everything the engine needs that the
ONNX graph and the tokenizer file do not carry themselves (padding side, special token ids, the
longest sequence the model accepts) plus provenance: source, file checksums and library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Precision
from ..errors import ModelFolderError

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1

# The model's two outputs, by these names, in every exported ONNX file.
START_LOGITS = "start_logits"
END_LOGITS = "end_logits"
LOGIT_OUTPUTS = (START_LOGITS, END_LOGITS)


@dataclass(frozen=True)
class TokenizerInfo:
    padding_side: str
    cls_token_id: int | None
    pad_token_id: int
    model_max_length: int


@dataclass(frozen=True)
class Manifest:
    model_type: str
    source: str
    input_names: tuple[str, ...]
    max_length: int
    tokenizer: TokenizerInfo
    onnx_files: dict[str, str]
    default_precision: Precision
    checksums: dict[str, str]
    versions: dict[str, str]
    quantization: dict[str, object] = field(default_factory=dict)
    # What the export's self-check found: the largest logit difference from the source per
    # precision, and the tolerance it was held to (see worker.model.export_check).
    check: dict[str, object] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def onnx_path(self, folder: Path, precision: Precision | None = None) -> Path:
        chosen = precision or self.default_precision
        if chosen not in self.onnx_files:
            available = ", ".join(sorted(self.onnx_files)) or "none"
            quantize = "int8-static" if chosen == "int8-static" else "int8"
            raise ModelFolderError(
                f"{folder} has no {chosen} model (available: {available}); "
                f"re-run `qa-worker export` with --quantize {quantize} or pick --precision "
                "from those"
            )
        return folder / self.onnx_files[chosen]

    def files_to_load(self, precision: Precision | None = None) -> list[str]:
        """The files an engine of `precision` reads: the tokenizer, the ONNX file and its data."""
        onnx_name = self.onnx_files[precision or self.default_precision]
        side_files = sorted(
            name for name in self.checksums if name.startswith(onnx_name) and name != onnx_name
        )
        return [TOKENIZER_NAME, onnx_name, *side_files]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise ModelFolderError(
                f"{folder} is not a prepared model folder (no {MANIFEST_NAME}); "
                f"create one with `qa-worker export --model SRC --out {folder}`"
            )
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT_VERSION:
            raise ModelFolderError(
                f"{path} has manifest format {raw.get('format')!r}, this worker reads "
                f"{FORMAT_VERSION}; re-export the model with this version of qa-worker"
            )
        raw["tokenizer"] = TokenizerInfo(**raw["tokenizer"])
        raw["input_names"] = tuple(raw["input_names"])
        return cls(**raw)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_checksum(folder: Path) -> str:
    """Identifies a model folder in answer events: the manifest pins every file by checksum."""
    return sha256_file(folder / MANIFEST_NAME)


def changed_file(folder: Path, manifest: Manifest, names: list[str] | None = None) -> str | None:
    """The first of `names` (default: every file the manifest lists) that is missing or differs."""
    for name in manifest.checksums if names is None else names:
        expected = manifest.checksums.get(name)
        path = folder / name
        if expected is None or not path.is_file() or sha256_file(path) != expected:
            return name
    return None


def verify_checksums(folder: Path, manifest: Manifest, names: list[str]) -> None:
    """Refuses a folder whose files differ from what the export wrote, naming the first one."""
    name = changed_file(folder, manifest, names)
    if name is None:
        return
    path = folder / name
    if name not in manifest.checksums:
        raise ModelFolderError(f"{folder / MANIFEST_NAME} lists no checksum for {name}")
    if path.is_file():
        what = (
            f"does not match its checksum in {MANIFEST_NAME}; the folder was changed after it "
            "was prepared"
        )
    else:
        what = "is listed in the manifest but missing"
    raise ModelFolderError(
        f"{path} {what}: prepare it again with {export_command(manifest, folder)}"
    )


def export_command(manifest: Manifest, folder: Path) -> str:
    """The `qa-worker export` command that makes `folder` again from the manifest's source."""
    # A Hub source is recorded as ID@COMMIT; a folder's path is recorded as it was given.
    pinned = re.fullmatch(r"(.+)@([0-9a-f]{40})", manifest.source)
    source, revision = (pinned[1], f" --revision {pinned[2]}") if pinned else (manifest.source, "")
    quantize = {"int8": " --quantize int8", "int8-static": " --quantize int8-static"}.get(
        "int8-static" if "int8-static" in manifest.onnx_files else manifest.default_precision, ""
    )
    calibration = " --calibration FILE" if "int8-static" in manifest.onnx_files else ""
    return f"`qa-worker export --model {source}{revision} --out {folder}{quantize}{calibration}`"


def file_access(path: Path) -> str:
    """Who may read `path` and who asks, as `ls -l` and `id` would tell: for a permission error."""
    try:
        status = os.stat(path)
    except OSError:
        return f"running as uid {os.geteuid()}"
    return (
        f"mode {stat.S_IMODE(status.st_mode):04o}, owner uid {status.st_uid}, "
        f"running as uid {os.geteuid()}"
    )

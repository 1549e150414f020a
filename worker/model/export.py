"""`qa-worker export`: a Hugging Face QA checkpoint to a prepared model folder.

The folder holds `model.onnx` (fp32), optionally `model.int8.onnx` (dynamic int8 quantization)
and with `int8-static` also `model.int8-static.onnx` (static int8, see
`worker.model.calibration`), `tokenizer.json` and `manifest.json`; see `worker.model.manifest`.
torch, transformers and onnx come from the `export` extra and are imported only when an export
runs, so the worker itself never needs them.

The graph is captured with the torch.export-based ONNX exporter (`dynamo=True`). It captures the
model soundly or fails: the batch and sequence axes are proven dynamic while exporting instead of
being traced through Python branches that may have been taken for the sample input only.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import __version__
from ..errors import (
    ConfigError,
    ExportCheckFailed,
    ExportError,
    HubError,
    OnnxInterfaceError,
    OnnxSourceError,
)
from ..observability.progress import progress_bar
from .calibration import STATIC_SETTINGS, calibration_windows, quantize_static_int8
from .export_check import (
    Logits,
    LogitSource,
    check_export,
    onnx_logits,
    sample_inputs,
)
from .hub import (
    CONFIG_PATTERNS,
    ONNX_PATTERNS,
    PICKLE_PATTERNS,
    WEIGHT_PATTERNS,
    download_checkpoint,
    looks_like_hub_id,
    snapshot_commit,
)
from .log_filter import dropping_logs
from .manifest import (
    LOGIT_OUTPUTS,
    MANIFEST_NAME,
    TOKENIZER_NAME,
    Manifest,
    TokenizerInfo,
    file_access,
    sha256_file,
)
from .onnx_source import (
    REQUIRED_INPUTS,
    OnnxSource,
    declared_max_length,
    find_onnx,
    inspect_onnx_source,
    tokenizer_info,
    write_tokenizer,
)

FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
STATIC_INT8_NAME = "model.int8-static.onnx"
QUANTIZATIONS = ("none", "int8", "int8-static")
Quantization = Literal["none", "int8", "int8-static"]

# The lowest opset the torch.export-based exporter emits natively; every onnxruntime the worker
# accepts (>= 1.20) runs it, and onnxruntime's quantizer handles it.
OPSET = 18

# Quantizing only weight matrix products keeps the logits close to fp32 while giving most of the
# speed-up: the attention products multiply activations by activations and stay in float.
INT8_SETTINGS: dict[str, Any] = {
    "method": "dynamic",
    "weight_type": "QInt8",
    "per_channel": False,
    "reduce_range": False,
    "op_types": ["MatMul", "Gemm"],
}

# protobuf caps a single ONNX file at 2 GiB; models whose weights come near it keep them in a
# side file instead.
EXTERNAL_DATA_BYTES = 1_800_000_000

# Tokenizers that declare no limit store this sentinel (int(1e30)) as model_max_length.
UNLIMITED_LENGTH = 1_000_000_000

# Models that number positions from pad_token_id + 1 and so use fewer positions than they have
# embeddings for.
POSITION_OFFSETS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}

EXPORT_EXTRA_HINT = "install the export extra: pip install 'kafka-qa-worker[export]'"
# What exporting weights imports: the export extra's packages, none of them in a runtime install.
EXPORT_LIBRARIES = ("torch", "transformers", "onnxscript", "safetensors")

log = logging.getLogger(__name__)


def export_model(
    source: str,
    out: Path,
    quantize: Quantization = "none",
    allow_pickle: bool = False,
    revision: str | None = None,
    progress: bool = False,
    calibration: Path | None = None,
) -> Manifest:
    """Prepares the QA checkpoint `source` (a local folder or a Hub id) into the folder `out`.

    A checkpoint that ships an ONNX model (`model.onnx` or `onnx/model.onnx`) is prepared from it
    with the runtime dependencies alone; otherwise, or when that model fails the interface check
    and the checkpoint also ships weights, its weights are exported through torch. A Hub id is
    recorded in the manifest as `ID@COMMIT`, the commit its revision resolved to.
    Everything is written to a staging folder beside `out` first, so a failed export leaves `out`
    as it was; a previous export in `out` is replaced. `int8-static` writes the dynamic int8 file
    too (it stays the default precision) and calibrates the static one on the questions in the
    file `calibration`.
    """
    if quantize not in QUANTIZATIONS:
        raise ExportError(
            f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZATIONS)}"
        )
    if (quantize == "int8-static") != (calibration is not None):
        raise ConfigError(
            "--calibration FILE goes with --quantize int8-static, and int8-static needs it: "
            "a SQuAD JSON or JSONL question file to calibrate the activation ranges on"
        )
    if calibration is not None and not calibration.is_file():
        raise ConfigError(
            f"calibration file {calibration} does not exist; pass a SQuAD JSON or JSONL "
            "question file with --calibration"
        )
    _check_target(out)
    folder, from_hub = _checkpoint_folder(source, revision, allow_pickle, progress)
    # The manifest names a Hub source by the commit it was prepared from; a folder as given.
    hub_id = source if from_hub else None
    if hub_id is not None:
        source = f"{hub_id}@{snapshot_commit(folder)}"
    onnx_path = find_onnx(folder)
    steps = {"none": 3, "int8": 4, "int8-static": 5}[quantize]
    try:
        with progress_bar("export", steps, progress, unit="steps") as bar:
            if onnx_path is not None:
                try:
                    found = inspect_onnx_source(folder, onnx_path)
                except OnnxInterfaceError as error:
                    folder = _weights_instead(error, source, hub_id, folder, allow_pickle, progress)
                else:
                    return _prepare_onnx(source, found, out, quantize, calibration, bar)
            return _export_weights(source, folder, out, quantize, calibration, allow_pickle, bar)
    except (OnnxSourceError, ExportCheckFailed) as error:
        raise ExportError(str(error)) from error


def _weights_instead(
    error: OnnxInterfaceError,
    source: str,
    hub_id: str | None,
    folder: Path,
    allow_pickle: bool,
    progress: bool,
) -> Path:
    """The checkpoint folder with its weights, to prepare from when its ONNX model does not fit.

    Raises the interface error with the fix that applies: the export extra when the weights are
    there but torch is not, another checkpoint when there are no weights.
    """
    if hub_id is not None:
        # The first download took the ONNX model alone; the weights come now, at the same commit.
        try:
            folder = download_checkpoint(
                hub_id, snapshot_commit(folder), allow_pickle, progress, weights_only=True
            )
        except HubError as download_error:
            raise ExportError(
                f"{error}; fetching its weights instead failed: {download_error}"
            ) from download_error
    weights = _weight_files(folder, allow_pickle)
    if not weights:
        # Unpickling can run code: pickled weights count only when `export --allow-pickle` says.
        pickled = sorted(path.name for path in folder.glob("pytorch_model*.bin"))
        pickle_hint = (
            f"; its pickled {', '.join(pickled)} is used only by `qa-worker export --allow-pickle`"
            if pickled and not allow_pickle
            else ""
        )
        raise OnnxSourceError(
            f"{error}. {source} ships no safetensors weights to export instead{pickle_hint}: use "
            "a checkpoint whose ONNX model has these inputs and outputs, or one that ships its "
            "weights"
        )
    missing = [name for name in EXPORT_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxSourceError(
            f"{error}. {source} also ships weights ({', '.join(weights)}), which the worker "
            f"prepares instead when the export extra is installed (this one lacks "
            f"{', '.join(missing)}): pip install 'kafka-qa-worker[export]'"
        )
    log.warning("%s; preparing %s from its weights (%s) instead", error, source, ", ".join(weights))
    return folder


def _weight_files(folder: Path, allow_pickle: bool) -> list[str]:
    found = sorted(path.name for path in folder.glob("*.safetensors"))
    if not found and allow_pickle:
        found = sorted(path.name for path in folder.glob("pytorch_model*.bin"))
    return found


def _prepare_onnx(
    source: str,
    found: OnnxSource,
    out: Path,
    quantize: Quantization,
    calibration: Path | None,
    bar: Any,
) -> Manifest:
    import onnxruntime
    import tokenizers

    max_length = max_sequence_length(
        found.model_type, found.max_position_embeddings, declared_max_length(found.folder)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-") as staging:
        stage = Path(staging)
        bar.set_description("export: tokenizer")
        tokenizer = write_tokenizer(found, stage / TOKENIZER_NAME)
        info = tokenizer_info(found, tokenizer, max_length)
        bar.update()
        bar.set_description("export: copying the ONNX model")
        # The graph names its side file of weights; both keep their names.
        for path in (found.onnx_path, *found.side_files):
            shutil.copyfile(path, stage / path.name)
        written = [TOKENIZER_NAME, FP32_NAME, *(path.name for path in found.side_files)]
        onnx_files = {"fp32": FP32_NAME}
        quantization: dict[str, object] = {}
        versions = {
            "kafka-qa-worker": __version__,
            "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__,
        }
        bar.update()
        if quantize != "none":
            import onnx

            versions["onnx"] = onnx.__version__
            quantization = _quantize(
                stage,
                onnx_files,
                written,
                bool(found.side_files),
                info,
                found.input_names,
                calibration,
                bar,
            )
        manifest = _check_and_install(
            stage,
            out,
            written,
            source=source,
            model_type=found.model_type,
            input_names=found.input_names,
            max_length=max_length,
            info=info,
            onnx_files=onnx_files,
            quantize=quantize,
            quantization=quantization,
            versions=versions,
            reference=lambda: onnx_logits(found.onnx_path),
            reference_name="source ONNX model",
            bar=bar,
        )
    return manifest


def _export_weights(
    source: str,
    folder: Path,
    out: Path,
    quantize: Quantization,
    calibration: Path | None,
    allow_pickle: bool,
    bar: Any,
) -> Manifest:
    _check_weights(folder, allow_pickle)
    bar.set_description("export: loading the checkpoint")
    torch, transformers = _import_export_libraries()

    tokenizer = _load_tokenizer(transformers, folder)
    model = _load_model(transformers, folder, allow_pickle)
    input_names = _input_names(model, tokenizer)
    max_length = _max_length(model.config, tokenizer)
    info = TokenizerInfo(
        padding_side=tokenizer.padding_side,
        cls_token_id=tokenizer.cls_token_id,
        pad_token_id=tokenizer.pad_token_id,
        model_max_length=max_length,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-") as staging:
        stage = Path(staging)
        written = [TOKENIZER_NAME]
        _write_tokenizer(tokenizer, folder, stage / TOKENIZER_NAME)
        bar.update()
        bar.set_description("export: torch.onnx.export")
        onnx_files = {"fp32": FP32_NAME}
        external = _parameter_bytes(model) > EXTERNAL_DATA_BYTES
        _export_onnx(torch, model, tokenizer, input_names, stage / FP32_NAME, external)
        written += _with_external_data(stage, FP32_NAME)
        bar.update()
        quantization: dict[str, object] = {}
        if quantize != "none":
            quantization = _quantize(
                stage, onnx_files, written, external, info, tuple(input_names), calibration, bar
            )
        manifest = _check_and_install(
            stage,
            out,
            written,
            source=source,
            model_type=model.config.model_type,
            input_names=tuple(input_names),
            max_length=max_length,
            info=info,
            onnx_files=onnx_files,
            quantize=quantize,
            quantization=quantization,
            versions=_versions(torch, transformers),
            reference=lambda: _torch_logits(torch, model),
            reference_name="PyTorch model",
            bar=bar,
        )
    return manifest


def _check_and_install(
    stage: Path,
    out: Path,
    written: list[str],
    *,
    source: str,
    model_type: str,
    input_names: tuple[str, ...],
    max_length: int,
    info: TokenizerInfo,
    onnx_files: dict[str, str],
    quantize: Quantization,
    quantization: dict[str, object],
    versions: dict[str, str],
    reference: Callable[[], LogitSource],
    reference_name: str,
    bar: Any,
) -> Manifest:
    """Checks the staged ONNX files' logits against the model they came from, then writes their
    manifest and moves the `written` files from `stage` to `out`; returns the manifest.

    `reference` makes the source's logit function only once the check begins, since making one
    may load a model.
    """
    bar.set_description("export: checking logits")
    inputs = sample_inputs(stage / TOKENIZER_NAME, input_names, info.pad_token_id, max_length)
    check = check_export(stage, onnx_files, inputs, reference(), reference_name)
    bar.update()
    manifest = Manifest(
        model_type=model_type,
        source=source,
        input_names=input_names,
        max_length=max_length,
        tokenizer=info,
        onnx_files=onnx_files,
        default_precision="fp32" if quantize == "none" else "int8",
        checksums={name: sha256_file(stage / name) for name in written},
        versions=versions,
        quantization=quantization,
        check=check,
    )
    _replace_export(stage, out, written)
    manifest.write(out)
    return manifest


def _quantize(
    stage: Path,
    onnx_files: dict[str, str],
    written: list[str],
    external: bool,
    info: TokenizerInfo,
    input_names: tuple[str, ...],
    calibration: Path | None,
    bar: Any,
) -> dict[str, object]:
    """Writes the int8 file(s) beside the staged fp32 one and records them; returns the settings.

    The manifest keeps the dynamic settings at the top of `quantization`, as before static int8
    existed, and the static ones (with what they were calibrated on) under "int8-static".
    """
    bar.set_description("export: int8 quantization")
    quantize_int8(stage / FP32_NAME, stage / INT8_NAME, external)
    onnx_files["int8"] = INT8_NAME
    written += _with_external_data(stage, INT8_NAME)
    quantization: dict[str, object] = copy.deepcopy(INT8_SETTINGS)
    bar.update()
    if calibration is not None:
        bar.set_description("export: static int8 calibration")
        windows = calibration_windows(calibration, stage / TOKENIZER_NAME, info)
        quantize_static_int8(
            stage / FP32_NAME,
            stage / STATIC_INT8_NAME,
            windows,
            input_names,
            info.pad_token_id,
            external,
        )
        onnx_files["int8-static"] = STATIC_INT8_NAME
        written += _with_external_data(stage, STATIC_INT8_NAME)
        quantization["int8-static"] = {
            **copy.deepcopy(STATIC_SETTINGS),
            "calibration_file": calibration.name,
            "calibration_sha256": sha256_file(calibration),
            "calibration_windows": len(windows),
        }
        bar.update()
    return quantization


def _torch_logits(torch: Any, model: Any) -> LogitSource:
    def run(inputs: Mapping[str, np.ndarray]) -> Logits:
        with torch.no_grad():
            output = model(**{name: torch.from_numpy(array) for name, array in inputs.items()})
        return output.start_logits.numpy(), output.end_logits.numpy()

    return run


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportError(
            f"{out} is not empty and holds no previous export ({MANIFEST_NAME} is missing); "
            "choose an empty or new folder for --out, so no unrelated files are overwritten"
        )


def _checkpoint_folder(
    source: str, revision: str | None, allow_pickle: bool, progress: bool
) -> tuple[Path, bool]:
    """The checkpoint's folder, and whether it came from the Hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ExportError(f"--revision applies to Hub ids, and {source} is a local folder")
        _check_readable(path, allow_pickle)
        return path, False
    if path.exists():
        raise ExportError(f"{source} is a file; pass the checkpoint folder that holds it")
    if not looks_like_hub_id(source):
        raise ExportError(
            f"{source} does not exist; pass a Hugging Face checkpoint folder or a Hub model id"
        )
    try:
        return download_checkpoint(source, revision, allow_pickle, progress), True
    except HubError as error:
        raise ExportError(str(error)) from error


def _check_readable(folder: Path, allow_pickle: bool) -> None:
    """Raises ExportError naming the first file of the checkpoint the export reads that this
    process may not read.

    Loading the checkpoint reports an unreadable model.safetensors as "FileNotFoundError: No
    such file or directory", for a file that is there.
    """
    patterns = CONFIG_PATTERNS + ONNX_PATTERNS + WEIGHT_PATTERNS
    patterns += PICKLE_PATTERNS if allow_pickle else []
    try:
        with os.scandir(folder):
            pass
        for path in sorted({path for pattern in patterns for path in folder.glob(pattern)}):
            if path.is_file():
                path.open("rb").close()
    except PermissionError as error:
        where = Path(error.filename or folder)
        raise ExportError(
            f"{where} cannot be read (PermissionError: permission denied, {file_access(where)}): "
            "make it readable by this user (chmod a+r) or export as its owner"
        ) from None


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuses pickled weights unless asked: unpickling a file can run arbitrary code."""
    if any(folder.glob("*.safetensors")):
        return
    # Not every *.bin: checkpoints often carry a pickled training_args.bin beside the weights.
    pickled = sorted(path.name for path in folder.glob("pytorch_model*.bin"))
    if pickled and not allow_pickle:
        raise ExportError(
            f"{folder} has weights only in pickle format ({', '.join(pickled)}), and loading "
            "pickle files can run code from the file; convert them to safetensors, or pass "
            "--allow-pickle if you trust the checkpoint"
        )
    if not pickled:
        raise ExportError(
            f"{folder} has neither an ONNX model (model.onnx or onnx/model.onnx) nor model "
            "weights (*.safetensors or pytorch_model.bin); pass the folder of a complete "
            "Hugging Face checkpoint (a Hub download fetches pytorch_model.bin only with "
            "--allow-pickle)"
        )


def _import_export_libraries() -> tuple[Any, Any]:
    # onnxscript is used by torch.onnx.export; checked here so that a missing one gets the
    # install hint instead of a failure deep inside the exporter.
    missing = [name for name in EXPORT_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            "exporting the checkpoint's weights to ONNX needs the export extra "
            f"({', '.join(missing)} missing here): {EXPORT_EXTRA_HINT}"
        )
    import torch
    import transformers

    return torch, transformers


def _load_tokenizer(transformers: Any, folder: Path) -> Any:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except Exception as error:
        raise ExportError(
            f"cannot load the tokenizer of {folder} ({type(error).__name__}: {error}); the folder "
            "needs tokenizer.json or the files a fast tokenizer is built from"
        ) from error
    if not tokenizer.is_fast:
        raise ExportError(
            f"{folder} has no fast (Rust) tokenizer and transformers cannot convert its "
            f"{type(tokenizer).__name__}; the worker needs tokenizer.json: save one with "
            "`AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR)` "
            "where the conversion works"
        )
    if tokenizer.pad_token_id is None:
        raise ExportError(
            f"the tokenizer of {folder} has no padding token, which batching needs; "
            "set pad_token in its tokenizer_config.json"
        )
    return tokenizer


def _load_model(transformers: Any, folder: Path, allow_pickle: bool) -> Any:
    try:
        model = transformers.AutoModelForQuestionAnswering.from_pretrained(
            folder,
            # With allow_pickle, safetensors still win when both formats are present.
            use_safetensors=None if allow_pickle else True,
        )
    except Exception as error:
        raise ExportError(
            f"cannot load {folder} as a question-answering model "
            f"({type(error).__name__}: {error}); it needs an architecture that "
            "AutoModelForQuestionAnswering supports, such as BERT, MobileBERT, DistilBERT "
            "or RoBERTa"
        ) from error
    return model.eval()


def _input_names(model: Any, tokenizer: Any) -> list[str]:
    """The tokenizer outputs the model's forward takes, in the tokenizer's order."""
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in tokenizer.model_input_names if name in accepted]
    missing = set(REQUIRED_INPUTS) - set(names)
    if missing:
        raise ExportError(
            f"the model and tokenizer do not share the inputs {sorted(missing)} "
            f"(tokenizer gives {tokenizer.model_input_names}); check that they belong together"
        )
    return names


def _max_length(config: Any, tokenizer: Any) -> int:
    return max_sequence_length(
        config.model_type,
        getattr(config, "max_position_embeddings", None),
        tokenizer.model_max_length,
    )


def max_sequence_length(model_type: str, positions: int | None, declared: int | None) -> int:
    """The longest sequence the model accepts: the tokenizer's limit, capped by the positions."""
    if positions is not None:
        positions -= POSITION_OFFSETS.get(model_type, 0)
    if declared is None or declared >= UNLIMITED_LENGTH:
        if positions is None:
            raise ExportError(
                "neither the tokenizer (model_max_length) nor the model config "
                "(max_position_embeddings) says how long a sequence may be; set "
                "model_max_length in tokenizer_config.json"
            )
        return int(positions)
    return int(declared if positions is None else min(declared, positions))


def _write_tokenizer(tokenizer: Any, folder: Path, target: Path) -> None:
    """Copies the checkpoint's tokenizer.json when transformers uses it unchanged.

    The reference pipeline reads the same file, so a byte copy leaves no room for drift. But
    transformers rewrites parts of the backend at load time when tokenizer_config.json asks for
    it (lowercasing, add_prefix_space, ...); then the file alone would tokenize differently, and
    the backend as transformers built it is saved instead.
    """
    from tokenizers import Tokenizer

    source = folder / TOKENIZER_NAME
    if source.is_file() and _same_tokenizer(Tokenizer.from_file(str(source)), tokenizer):
        shutil.copyfile(source, target)
    else:
        tokenizer.backend_tokenizer.save(str(target))


def _same_tokenizer(from_file: Any, tokenizer: Any) -> bool:
    # Padding and truncation are session settings the worker overrides; the rest must match.
    def pipeline_of(backend: Any) -> dict[str, Any]:
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
        return state

    return pipeline_of(from_file) == pipeline_of(tokenizer.backend_tokenizer)


def _parameter_bytes(model: Any) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())


def _export_sample(tokenizer: Any, input_names: list[str]) -> tuple[Any, ...]:
    # Two pairs of different lengths, so the sample has padding and a batch above one; the
    # exporter then has no reason to specialise on either axis.
    encoded = tokenizer(
        ["Where does the river flow?", "Who?"],
        ["The river flows north through the valley into the sea.", "Marie did."],
        padding=True,
        return_tensors="pt",
    )
    return tuple(encoded[name] for name in input_names)


def logits_only(torch: Any, model: Any, input_names: Sequence[str]) -> Any:
    """`model` as a module that takes the inputs positionally and returns the two logits."""

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> tuple[Any, Any]:
            output = self.model(**dict(zip(input_names, inputs, strict=True)), return_dict=True)
            return output.start_logits, output.end_logits

    return LogitsOnly().eval()


def _export_onnx(
    torch: Any, model: Any, tokenizer: Any, input_names: list[str], target: Path, external: bool
) -> None:

    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    # The exporter lists the torchvision operators it skips; QA models use none of them.
    skipped = dropping_logs(
        "torch.onnx._internal.exporter._registration", "torchvision is not installed"
    )
    with skipped, warnings.catch_warnings():
        # Repeated for every input that shares the two dims; says nothing about the result.
        warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
        # torch's own use of a deprecated pytree API; nothing the user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
        try:
            torch.onnx.export(
                logits_only(torch, model, input_names),
                _export_sample(tokenizer, input_names),
                str(target),
                input_names=input_names,
                output_names=list(LOGIT_OUTPUTS),
                dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in input_names),),
                opset_version=OPSET,
                dynamo=True,
                external_data=external,
                verbose=False,
            )
        except Exception as error:
            raise ExportError(
                f"torch.onnx.export failed for {type(model).__name__} "
                f"({type(error).__name__}: {error}); this architecture may not be exportable "
                f"with torch {torch.__version__}"
            ) from error


def quantize_int8(
    source: Path | Any, target: Path, external: bool = False, **overrides: Any
) -> None:
    """ONNX Runtime's dynamic int8 quantization with INT8_SETTINGS, or `overrides` of them.

    `source` is a file or a loaded ModelProto; given a file, the quantizer writes a
    shape-inferred copy beside it while it works.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {**INT8_SETTINGS, **overrides}
    # The quantizer always advises running its pre-processing (shape inference) first. Dynamic
    # quantization does not need it here: it quantizes every MatMul whose second input is a
    # weight, and the exported graph keeps weights as plain initializers. (The pre-processing's
    # symbolic shape inference also fails on these graphs.) Keep the advice off the console.
    with dropping_logs("", "Please consider to run pre-processing before quantization"):
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=settings["op_types"],
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            weight_type=getattr(QuantType, settings["weight_type"]),
            use_external_data_format=external,
        )


def _with_external_data(folder: Path, name: str) -> list[str]:
    return [name] + [data.name for data in folder.glob(f"{name}.data")]


def _replace_export(stage: Path, out: Path, names: list[str]) -> None:
    """Moves the staged files into `out`, first removing what a previous export left there."""
    out.mkdir(parents=True, exist_ok=True)
    previous = out / MANIFEST_NAME
    if previous.is_file():
        stale = json.loads(previous.read_text(encoding="utf-8")).get("checksums", {})
        # Only plain file names: a manifest must not make the export delete outside `out`.
        for name in (name for name in stale if Path(name).name == name):
            (out / name).unlink(missing_ok=True)
        # The old manifest goes last: until then the folder still counts as an export, so an
        # interrupted replacement can simply be run again.
        previous.unlink()
    for name in names:
        shutil.move(stage / name, out / name)


def _versions(torch: Any, transformers: Any) -> dict[str, str]:
    import onnx
    import onnxruntime
    import tokenizers

    return {
        "kafka-qa-worker": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
    }

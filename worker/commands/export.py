"""`qa-worker export`: a checkpoint or Hub model made into a model folder the worker loads."""

from __future__ import annotations

import argparse

from ..config import Settings
from ..model.export import export_model
from ..observability.progress import progress_wanted


def command_export(args: argparse.Namespace) -> int:
    # Only the progress setting applies to export; its other flags are its own.
    progress = Settings.from_sources(argparse.Namespace(progress=args.progress)).progress
    manifest = export_model(
        args.model,
        args.out,
        quantize=args.quantize,
        allow_pickle=args.allow_pickle,
        revision=args.revision,
        progress=progress_wanted(progress),
        calibration=args.calibration,
    )
    print(manifest.to_json(), end="")
    return 0

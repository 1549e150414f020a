"""`qa-worker export`: a checkpoint or Hub model made into a model folder the worker loads."""

from __future__ import annotations

import argparse

from ..config import Settings
from ..model.export import export_model
from ..observability.progress import progress_wanted


def command_export(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    # The checkpoint goes on as given, which the manifest records.
    manifest = export_model(
        args.source,
        args.out,
        quantize=args.quantize,
        allow_pickle=args.allow_pickle,
        revision=args.revision,
        progress=progress_wanted(settings.progress),
        calibration=args.calibration,
    )
    print(manifest.to_json(), end="")
    return 0

"""A model folder: prepared, checked, cached and loaded.

- `manifest`: what a folder holds (`manifest.json`), its checksums, precisions and logit names.
- `export`: a folder from a checkpoint (torch) or from a shipped ONNX file, with int8 variants.
- `onnx_source`: preparing a model that ships its own ONNX file.
- `tokenizer_build`: `tokenizer.json` from a model's slow tokenizer files.
- `export_check`: the self-check every exported folder passes against its own reference.
- `calibration`: static int8, calibrated on windows the engine itself would build.
- `log_filter`: dropping a library's known log lines, for `export` and `calibration` both.
- `hub`: downloads from the Hugging Face Hub.
- `cache`: the folder a Hub id or a path names, prepared once and kept.
- `loading`: a `QAEngine` from a folder, as every command loads it.

May import: `worker.errors`, `worker.config`, `worker.squad`, `worker.observability.progress`,
and `worker.qa` (`loading` builds the engine; `calibration` tokenizes as the engine does).
`worker.qa` and `worker.backends` import only `manifest` from here, nothing above it.
Never imports the broker, the stream or the commands.
"""

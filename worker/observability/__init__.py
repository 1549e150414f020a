"""What the worker tells its operators: metrics, health, logs, traces and progress.

- `metrics`: `WorkerMetrics`, the Prometheus registry and what each metric counts.
- `http`: `/metrics`, `/healthz` and `/readyz`.
- `logs`: log configuration, escaped record values and the event fields bound to each line.
- `log_rate`: the limiter that folds a line repeated within a window into one.
- `tracing`: the `Tracing` interface, the no-op tracer and `build_tracing` from the settings.
- `tracing_api`: what an event's trace is (`EventTrace`, `ConsumedRecord`, headers) and the
  interface a tracer implements, the part `tracing` and `tracing_otel` share.
- `tracing_otel`: that interface on OpenTelemetry, exported over OTLP/HTTP.
- `progress`: progress lines of long offline commands (export, offline answers).

May import: `worker.errors`, `worker.config`, `worker.lifecycle` and `worker.qa.types` (what an
answer is, to count it). Never imports the stream, the batcher, the model or the commands:
they call into this package, not the other way round.
"""

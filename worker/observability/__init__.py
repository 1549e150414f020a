"""What the worker tells its operators: metrics, health, logs, traces and progress.

- `metrics`: `WorkerMetrics`, the Prometheus registry and what each metric counts.
- `http`: `/metrics`, `/healthz` and `/readyz`.
- `bounded_http`: the HTTP/1.1 server under them, bounded in connections (by the open-file
  limit), time and size, so that no client can wedge the worker through its port.
- `logs`: log configuration, escaped record values and the event fields bound to each line.
- `log_rate`: the limiter that folds a line repeated within a window into one.
- `tracing_interface`: `Tracing`, the hooks the worker calls, and what they are handed
  (`ConsumedRecord`, `EventTrace`, `Headers`): what `tracing` and `tracing_otel` share.
- `tracing`: the no-op tracer, W3C `traceparent` reading, and `build_tracing` from the settings.
- `tracing_otel`: `Tracing` on OpenTelemetry, exported over OTLP/HTTP (the `tracing` extra).
- `progress`: progress lines of long offline commands (export, offline answers).

May import: `worker.errors`, `worker.config`, `worker.lifecycle` and `worker.qa.types` (what an
answer is, to count it). Never imports the stream, the batcher, the model or the commands:
they call into this package, not the other way round.
"""

"""`qa-worker bench`: what one worker answers per second, how fast, and what it costs, in one run.

    qa-worker bench --model DIR --squad FILE [--events N] [--json OUT] [--plot OUT.png]

On the first N questions of the file, in this order:

- `ceiling`: the bare ONNX Runtime session over the pre-tokenized windows, grouped by length into
  batches of each of a few sizes (median of interleaved rounds); the best size is the most this
  model gives on this machine.
- `engine`: `QAEngine.answer_many` offline: tokenize, infer, decode.
- `end_to_end`: `qa-worker run` as a child process behind a broker (an embedded one unless
  `--broker` is given), every event produced at once; throughput from the first produce to the
  last answer consumed, latency of each event from its produce to its answer's arrival; the
  round of median throughput of three.
- `sweep`: open-loop Poisson arrivals at 25, 50, 75 and 100% of that throughput.
- `reference` (with `--reference-python`): transformers' pipeline on the source checkpoint.
- `tracing_overhead` (with `--tracing-overhead`): a second worker with tracing on at 100%
  sampling, exporting over OTLP/HTTP to loopback, in rounds alternating with the first; the
  events/s ratio (`tracing_overhead.py`).

Beside them: the machine's float32 and int8 GEMM rates and the model's FLOPs per window (so the
share of the CPU's peak the model reaches), the batch-1 inference time of a typical window, the
padding ratio, and the worker's peak RSS and time from start to ready. The JSON report (`--json`)
holds all of it and a `targets` section; `--plot` draws latency percentiles against throughput.

Latency on the embedded broker: tansu answers a fetch only when the consumer's fetch wait runs
out, even when records arrive meanwhile, so each hop through it may add up to that wait. Both the
worker and the answers' consumer here wait at most `worker.broker.FETCH_WAIT_MS`, so latencies
are late by at most twice that; `worker_latency_ms` (from the answers' own timings) is the
worker's part.

The worker runs as its own process, as it does in production: its RSS and start-up time are then
its own (not those of a process that also holds the benchmark's engine and GEMM matrices, and
that imported everything long before), and the load generator does not share its event loop.
"""

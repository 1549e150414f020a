"""`qa-worker bench`: what one worker answers per second, how fast, and what it costs, in one run.

    qa-worker bench --model DIR --squad FILE [--events N] [--json OUT] [--plot OUT.png]

On the first N questions of the file, in this order:

- `ceiling`: bare ONNX Runtime over the pre-tokenized windows, grouped by length into batches of
  each of a few sizes, in every layout of streams x threads per stream that fits the cores (each
  stream a thread taking the next batch, as the batcher's streams do; median of interleaved
  rounds); the best (layout, size) is the most this model gives on this machine, and its CPU
  cores are measured (process CPU time over wall time), so events per core-second are too.
- `baseline`: the best size of the 1 x cores layout (one session, every core its intra-op
  thread), the ceiling before inference streams.
- `gemm_model_shapes`: MatMulInteger timed at the model's own (M, K, N), M the ceiling's rows per
  batch, on the ceiling's layout: the honest limit beside the large-matrix peak.
- `engine`: `QAEngine.answer_many` offline: tokenize, infer, decode.
- `end_to_end`: `qa-worker run` as a child process behind a broker (an embedded one unless
  `--broker` is given), every event produced at once; throughput from the first produce to the
  last answer consumed, latency of each event from its produce to its answer's arrival; the
  round of median throughput of three.
- `sweep`: open-loop Poisson arrivals at 25, 50, 75 and 100% of that throughput.
- `goodput`: the highest open-loop rate whose p99 is within 10 windows' inference, by a
  bisection of five short runs between 0 and that throughput.
- `idle_cpu_cores`: the worker's CPU with nothing to do (`--idle-seconds`, 30 by default).
- `memory`: peak RSS of the worker's layout against a second worker with one stream of the same
  threads; the difference per extra stream.
- `reference` (with `--reference-python`): transformers' pipeline on the source checkpoint.
- `tracing_overhead` (with `--tracing-overhead`): a second worker with tracing on at 100%
  sampling, exporting over OTLP/HTTP to loopback, in rounds alternating with the first; the
  events/s ratio (`tracing_overhead.py`).
- `heavy_mix` (with `--heavy-mix`): 40, then 200 contexts of `--max-context-chars` (SQuAD
  contexts of the file, one after another) at once on one partition, one-window questions of the
  workload open-loop on the others while they wait; then 2 documents of that length tagged with
  a 12-field question set. Per case, on a worker of its own: RSS growth, the light questions'
  latency (ms and windows), windows/s against the ceiling's, event-loop lag, batch-plan time and
  /healthz and /readyz latency (`heavy_mix.py`).

Beside them: the machine's float32 and int8 GEMM rates and the model's FLOPs per window (so the
share of the CPU's peak the model reaches), the batch-1 inference time of a typical window (on
one session with all cores, whatever the worker's layout), the padding ratio, and the worker's
peak RSS and time from start to ready. The JSON report (`--json`) holds all of it and a `targets`
section, each performance target (`report.TARGETS`) met or MISSED; `--plot` draws latency
percentiles against throughput. The worker runs with the settings given, its streams
and threads included, so `--inference-streams 1` measures that layout end to end.

Latency on the embedded broker: tansu answers a fetch only when the consumer's fetch wait runs
out, even when records arrive meanwhile, so each hop through it may add up to that wait. Both the
worker and the answers' consumer here wait at most `worker.embedded.broker.FETCH_WAIT_MS`, so
latencies are late by at most twice that; `worker_latency_ms` (from the answers' own timings) is the
worker's part.

The worker runs as its own process, as it does in production: its RSS and start-up time are then
its own (not those of a process that also holds the benchmark's engine and GEMM matrices, and
that imported everything long before), and the load generator does not share its event loop.
"""

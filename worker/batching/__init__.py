"""Batching: which windows run together, when, and on which inference stream.

It owns the pending queue (fairness, deadlines, the run estimate), the scheduler that hands
batches to the streams (`batcher.MicroBatcher`) and the rules that size a batch for a layout.
The backend only says what it can do (streams, threads per stream); `qa/` holds the QA logic
(windows, decoding) this package batches.

Two layers live here: `plan`, `streams` and `layout` are pure rules that the offline engine
(`qa.engine.QAEngine.answer_many`) uses too, below `qa`; the queue and the scheduler use `qa`'s
window and logit types, above it. The package's `__init__` imports nothing, so either layer
loads alone.
"""

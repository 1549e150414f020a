"""The parity harness: what the worker's answers are compared with, for the tests and benchmarks.

Small random-weight checkpoints (`models`), seeded question/context pairs (`texts`), transformers'
pipeline run in its own virtual environment (`reference`), the parity cases with the engine's
answers to them (`cases`), and the RoBERTa-form tokenizer trained on given text
(`roberta_tokenizer`, which the benchmark models use too). It lives apart from `tests` so that
tools such as benchmarks/parity_report.py need import no test module, and apart from `worker`
because it needs torch and transformers, which the runtime must not.
"""

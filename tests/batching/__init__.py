"""Tests of worker.batching."""

"""Tests of worker.stream."""

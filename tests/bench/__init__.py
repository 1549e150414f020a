"""Tests of worker.bench."""

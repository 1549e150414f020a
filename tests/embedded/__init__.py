"""Tests of worker.embedded."""

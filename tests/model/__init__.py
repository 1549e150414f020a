"""Tests of worker.model."""

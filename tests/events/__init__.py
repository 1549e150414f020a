"""Tests of worker.events."""

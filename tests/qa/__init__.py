"""Tests of worker.qa."""

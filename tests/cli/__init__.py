"""Tests of worker.cli, worker.commands and worker.preflight."""

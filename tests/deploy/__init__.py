"""Tests of what deploys the worker: the Helm chart and the container image."""

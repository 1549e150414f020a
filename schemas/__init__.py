"""The event contracts as JSON Schema files, installed as `worker.schemas` (see pyproject.toml)."""

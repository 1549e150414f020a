"""kafka-qa-worker: extractive question answering over Kafka on ONNX Runtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kafka-qa-worker")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

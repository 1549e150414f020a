"""kafka-qa-worker: extractive question answering over Kafka on ONNX Runtime.

Imports nothing: every entry point (`python -m worker`, the `qa-worker` script) runs this first,
before its own first line can hold the stop signals (see worker.__main__).
"""


def __getattr__(name: str) -> str:
    # `__version__` is looked up on first use: importing importlib.metadata takes some 50 ms,
    # which would otherwise pass before the entry point can catch stop signals.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("kafka-qa-worker")
    except PackageNotFoundError:  # running from a source tree that was not installed
        found = "0.0.0"
    globals()["__version__"] = found
    return found

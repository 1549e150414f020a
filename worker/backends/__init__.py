"""Inference backends: one padded batch of windows in, start and end logits out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np


class InferenceBackend(Protocol):
    """Runs the QA model on one padded batch.

    `inputs` maps the model's input names (`input_ids`, `attention_mask`, and `token_type_ids` for
    models that take them) to int64 arrays of shape (batch, length). Returns float32 start and end
    logits of the same shape. `run` may be called from several threads at once, one per stream
    (`0 <= stream < streams`); batches of one stream run one after another.
    """

    input_names: tuple[str, ...]
    streams: int

    @property
    def sessions(self) -> int:
        """Copies of the model's weights held, for reporting memory per stream."""
        ...

    def run(
        self, inputs: Mapping[str, np.ndarray], stream: int = 0
    ) -> tuple[np.ndarray, np.ndarray]: ...

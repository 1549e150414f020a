"""Windows for engines that stand in for the model: token ids and nothing to map answers with."""

from __future__ import annotations

import numpy as np

from worker.qa.windows import Window


def token_window(input_ids: np.ndarray) -> Window:
    """A window of these token ids, every position a candidate, with no offsets or words."""
    length = len(input_ids)
    return Window(
        input_ids=input_ids,
        type_ids=np.zeros(length, dtype=np.int64),
        candidates=np.ones(length, dtype=bool),
        offsets=np.zeros((length, 2), dtype=np.int32),
        word_ids=np.full(length, -1, dtype=np.int32),
        sequence_ids=np.full(length, -1, dtype=np.int8),
    )

"""Helpers the kinds share: signs of the events and where the events sit."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.observation import Batch


def signs(batch: Batch, idx, kind: str) -> np.ndarray:
    """(len(idx),) float32 of +1 / -1, -1 with the config's negative share of ``kind``."""
    p = batch.cfg.negative_share.get(kind, 0.0)
    return np.where(batch.rng.random(len(idx)) < p, -1.0, 1.0).astype(np.float32)


def subpixel(batch: Batch, idx):
    """Canvas (x, y) of the events of rows ``idx``: the centre, at a sub-pixel offset."""
    return batch.event_xy[0, idx], batch.event_xy[1, idx]

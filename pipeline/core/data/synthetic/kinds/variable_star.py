"""Variable stars: a star in both epochs whose flux changed."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.kinds.common import signs, subpixel
from pipeline.core.data.synthetic.observation import Batch, add_static_point


def render(batch: Batch, idx) -> None:
    """A star in both epochs whose flux changed, either sign."""
    rng, k = batch.rng, len(idx)
    change = signs(batch, idx, "variable_star") * np.exp(rng.normal(np.log(7.5), 0.6, k))
    change = batch.point_flux(idx, change * batch.cfg.snr_scale)
    base = batch.point_flux(idx, np.exp(rng.normal(np.log(15.0), 0.7, k)))
    base = np.maximum(base, 1.3 * np.abs(change))  # a fading star cannot go below zero
    x, y = subpixel(batch, idx)
    add_static_point(batch, idx, x, y, base.astype(np.float32),
                     evidence=True, science_flux=(base + change).astype(np.float32))

"""Negative point sources: a source in the template only."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.kinds.common import subpixel
from pipeline.core.data.synthetic.observation import TEMPLATE, Batch


def render(batch: Batch, idx) -> None:
    """A source in the template only: it faded or moved away."""
    snr = np.exp(batch.rng.normal(np.log(7.5), 0.5, len(idx))) * batch.cfg.snr_scale
    x, y = subpixel(batch, idx)
    flux = batch.point_flux(idx, snr)
    batch.add(TEMPLATE, idx, flux[:, None, None] * batch.psf(TEMPLATE, idx, x, y))

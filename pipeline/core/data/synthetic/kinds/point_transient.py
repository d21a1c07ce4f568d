"""Real transients (and ``point_like`` bogus, drawn the same way): a new point source."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.kinds.common import subpixel
from pipeline.core.data.synthetic.observation import SCIENCE, Batch


def split_lognormal(rng, size, median, sigma_low, sigma_high) -> np.ndarray:
    """(size,) log-normal draws with different widths below and above the median."""
    z = rng.standard_normal(size)
    return median * np.exp(np.where(z < 0, sigma_low, sigma_high) * z)


def render(batch: Batch, idx) -> None:
    """A new point source in the science epoch (real, and bogus that looks real)."""
    # Real set: SNR median 12.3, 5th-95th percentile 7.0-45.9 (Deep-HiTS predictions).
    snr = split_lognormal(batch.rng, len(idx), 12.6, 0.34, 0.92) * batch.cfg.snr_scale
    snr = np.clip(snr, 0.9 * batch.cfg.min_snr, 250.0)
    x, y = subpixel(batch, idx)
    flux = batch.point_flux(idx, snr)
    batch.add(SCIENCE, idx, flux[:, None, None] * batch.psf(SCIENCE, idx, x, y))

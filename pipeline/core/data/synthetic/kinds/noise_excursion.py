"""Noise excursions: no source, a correlated-noise blob on the difference image."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.kinds.common import signs, subpixel
from pipeline.core.data.synthetic.observation import SCIENCE, TEMPLATE, Batch
from pipeline.core.data.synthetic.optics import FWHM_TO_SIGMA


def render(batch: Batch, idx) -> None:
    """No source: a lumpy correlated-noise blob of |SNR| 5-8 on the difference image."""
    rng, k = batch.rng, len(idx)
    snr = rng.uniform(4.0, 7.0, k) * np.sqrt(batch.cfg.snr_scale)
    sign = signs(batch, idx, "noise_excursion")
    x, y = subpixel(batch, idx)
    psf_sigma = batch.fwhm[:, idx].max(axis=0) * FWHM_TO_SIGMA
    blob = np.zeros((k, batch.canvas_size, batch.canvas_size), np.float32)
    for _lump in range(3):  # irregular: a few offset, elongated lumps
        width = psf_sigma * rng.uniform(*batch.cfg.excursion_width, k)
        u, v = batch.rotated(x + rng.normal(0, 1.0, k), y + rng.normal(0, 1.0, k),
                             rng.uniform(0, np.pi, k))
        stretch = rng.uniform(1.0, 2.0, k)[:, None, None]
        w = width[:, None, None]
        blob += rng.uniform(0.3, 1.0, k)[:, None, None] * np.exp(
            -0.5 * ((u / (w * stretch)) ** 2 + (v / w) ** 2)
        )
    blob /= blob.max(axis=(1, 2), keepdims=True)
    amplitude = snr * batch.noise_sigma(idx)
    epoch = np.where(sign > 0, SCIENCE, TEMPLATE)
    # Added after PSF matching, so the blob keeps its noise-like shape (and is evidence).
    batch.after_matching[epoch, idx] += amplitude[:, None, None] * blob

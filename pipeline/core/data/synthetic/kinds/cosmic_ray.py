"""Cosmic rays: sharp hot pixels or short tracks, not seen through the PSF."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.kinds.common import signs, subpixel
from pipeline.core.data.synthetic.observation import SCIENCE, TEMPLATE, Batch


def render(batch: Batch, idx) -> None:
    """A sharp hot pixel or 2-6 px track, not seen through the PSF, mostly in the science."""
    rng, k = batch.rng, len(idx)
    sign = signs(batch, idx, "cosmic_ray")
    x, y = subpixel(batch, idx)
    length = np.where(rng.random(k) < 0.3, 0.0, rng.uniform(1.0, 5.0, k))
    theta = rng.uniform(0, np.pi, k)
    track = segment(batch, x, y, theta, length, width=0.55)
    track *= rng.uniform(0.5, 1.0, track.shape).astype(np.float32)
    track /= np.maximum(track.max(axis=(1, 2), keepdims=True), 1e-6)
    snr = np.exp(rng.normal(np.log(10.0), 0.8, k)) * batch.cfg.snr_scale
    amplitude = snr * batch.noise_sigma(idx)
    epoch = np.where(sign > 0, SCIENCE, TEMPLATE)
    # Added after PSF matching: a cosmic ray is not seen through the seeing, and the
    # classifiers trained on the real set call a ray blurred by the matching kernel real.
    batch.after_matching[epoch, idx] += amplitude[:, None, None] * track


def segment(batch: Batch, x, y, theta, length, width) -> np.ndarray:
    """(k, N, N) float32, 1 within ``width`` px of a segment centred on (x, y), else 0."""
    u, v = batch.rotated(x, y, theta)
    half = (np.asarray(length, np.float32) / 2.0)[:, None, None]
    along = np.maximum(np.abs(u) - half, 0.0)
    return ((along**2 + v**2) <= width**2).astype(np.float32)

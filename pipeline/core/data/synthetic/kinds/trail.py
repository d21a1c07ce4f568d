"""Trails: satellite or asteroid trails and diffraction spikes crossing the stamp."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.kinds.common import signs, subpixel
from pipeline.core.data.synthetic.observation import SCIENCE, TEMPLATE, Batch
from pipeline.core.data.synthetic.optics import FWHM_TO_SIGMA


def render(batch: Batch, idx) -> None:
    """A satellite/asteroid trail (PSF-wide) or a thin diffraction spike, in one epoch."""
    rng, k = batch.rng, len(idx)
    sign = signs(batch, idx, "trail")
    x, y = subpixel(batch, idx)
    theta = rng.uniform(0, np.pi, k)
    spike = rng.random(k) < batch.cfg.spike_share
    width = np.where(spike, 0.5, batch.fwhm[SCIENCE, idx] * FWHM_TO_SIGMA)
    _along, v = batch.rotated(x, y, theta)
    line = np.exp(-0.5 * (v / width[:, None, None]) ** 2) / (np.sqrt(2 * np.pi) * width[
        :, None, None])
    line /= line.max(axis=(1, 2), keepdims=True)
    snr = np.exp(rng.normal(np.log(8.0), 0.7, k)) * batch.cfg.snr_scale
    image = ((snr * batch.noise_sigma(idx))[:, None, None] * line).astype(np.float32)
    epoch = np.where(sign > 0, SCIENCE, TEMPLATE)
    for e in (TEMPLATE, SCIENCE):
        batch.add(e, idx[epoch == e], image[epoch == e])

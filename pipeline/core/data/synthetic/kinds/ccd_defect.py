"""CCD defects: bad columns or rows, bleed trails of saturated stars, masked CCD edges."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.config import NAN_FILL_ADU, SATURATION_ADU
from pipeline.core.data.synthetic.kinds.common import signs, subpixel
from pipeline.core.data.synthetic.observation import SCIENCE, TEMPLATE, Batch, add_static_point


def render(batch: Batch, idx) -> None:
    """A bad column or row, a saturated star with a bleed trail, or a masked CCD edge."""
    rng, k = batch.rng, len(idx)
    x, y = subpixel(batch, idx)
    subtype = rng.choice(3, size=k, p=[0.55, 0.25, 0.2])
    sign = signs(batch, idx, "ccd_defect")
    canvas = np.arange(batch.canvas_size)

    on_line_rows = subtype == 0  # bad column (or row) through the candidate, in one epoch
    if on_line_rows.any():
        s = idx[on_line_rows]
        vertical = rng.random(len(s)) < 0.7
        line_col = np.rint(x[on_line_rows]).astype(int)
        line_row = np.rint(y[on_line_rows]).astype(int)
        on_line = np.where(
            vertical[:, None, None],
            canvas[None, None, :] == line_col[:, None, None],
            canvas[None, :, None] == line_row[:, None, None],
        )
        snr = np.exp(rng.normal(np.log(8.0), 0.7, len(s))) * batch.cfg.snr_scale
        level = snr * batch.noise_sigma(s) * sign[on_line_rows]
        image = (level[:, None, None] * on_line).astype(np.float32)
        epoch = np.where(rng.random(len(s)) < 0.7, SCIENCE, TEMPLATE)
        for e in (TEMPLATE, SCIENCE):
            batch.add(e, s[epoch == e], image[epoch == e])

    bleed = subtype == 1  # saturated star, bleed trail in one epoch only
    if bleed.any():
        s = idx[bleed]
        flux = batch.point_flux(s, np.exp(rng.normal(np.log(3000.0), 0.7, len(s))))
        add_static_point(batch, s, x[bleed], y[bleed], flux, evidence=True)
        length = rng.integers(3, 11, len(s))
        column = np.rint(x[bleed]).astype(int)
        dist = np.abs(canvas[None, :, None] - np.rint(y[bleed]).astype(int)[:, None, None])
        trail = (canvas[None, None, :] == column[:, None, None]) & (
            dist <= length[:, None, None])
        image = (trail * SATURATION_ADU).astype(np.float32)
        epoch = np.where(rng.random(len(s)) < 0.85, SCIENCE, TEMPLATE)
        for e in (TEMPLATE, SCIENCE):
            batch.add(e, s[epoch == e], image[epoch == e])

    edge = subtype == 2  # masked CCD edge: NaN-filled strip, zero inverse variance
    if edge.any():
        s = idx[edge]
        side = rng.integers(0, 4, len(s))
        distance = rng.integers(1, 4, len(s))
        cx, cy = np.rint(x[edge]).astype(int), np.rint(y[edge]).astype(int)
        gx, gy = canvas[None, None, :], canvas[None, :, None]
        d, sd = distance[:, None, None], side[:, None, None]
        strip = np.where(
            sd == 0, gx >= cx[:, None, None] + d,
            np.where(sd == 1, gx <= cx[:, None, None] - d,
                     np.where(sd == 2, gy >= cy[:, None, None] + d, gy <= cy[:, None, None] - d)))
        # The fill sits in the epoch that gets convolved, so it bleeds into the unmasked
        # neighbours and makes the candidate, as NaN-filled pixels did in HiTS.
        epoch = np.argmin(batch.fwhm[:, s], axis=0)
        batch.fill[epoch, s] = strip
        batch.masked[s] = strip
        batch.evidence[epoch, s] += strip * NAN_FILL_ADU

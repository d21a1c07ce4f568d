"""Bad subtractions: a bright star or galaxy core that does not subtract cleanly."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic.kinds.common import signs, subpixel
from pipeline.core.data.synthetic.observation import Batch, add_galaxy, add_static_point


def prepare(batch: Batch, idx) -> None:
    """Misregister the science epoch more, and make the matching kernel wrong for half."""
    rng, k = batch.rng, len(idx)
    shift = rng.uniform(*batch.cfg.subtraction_shift_px, k)
    theta = rng.uniform(0, 2 * np.pi, k)
    batch.misregistration[:, idx] = shift * np.cos(theta), shift * np.sin(theta)
    wrong_kernel = rng.random(k) < 0.5
    batch.kernel_error[idx] = np.where(
        wrong_kernel, rng.choice([-1.0, 1.0], k) * rng.uniform(0.1, 0.3, k),
        batch.kernel_error[idx])


def render(batch: Batch, idx) -> None:
    """A bright star or galaxy core in both epochs that does not subtract cleanly."""
    rng, k = batch.rng, len(idx)
    x, y = subpixel(batch, idx)
    core = rng.random(k) < 0.3
    if core.any():
        add_galaxy(batch, idx[core], x[core], y[core], core=True, evidence=True)
    star = ~core
    if star.any():
        s = idx[star]
        peak_sigma = np.exp(rng.normal(np.log(30.0), 1.4, len(s)))
        flux = batch.point_flux(s, peak_sigma)
        # A photometric scaling error between the epochs sets the residual's sign.
        error = rng.uniform(*batch.cfg.subtraction_scale_error, len(s))
        scale = 1.0 + signs(batch, s, "bad_subtraction") * error
        add_static_point(batch, s, x[star], y[star], flux, evidence=True,
                         science_flux=(flux * scale).astype(np.float32))

"""Observing one batch of stamps: conditions, static scene, noise, PSF matching, the stamp.

A batch of B stamps is simulated on square canvases of N = ``stamp_size + 2 *
CANVAS_MARGIN`` pixels (39 for the default 21x21 stamp), larger than the stamp so that
convolutions, the Lanczos wrap-around and the re-centring crop never see the canvas edge.
``new_batch`` draws the observing conditions, ``render_static_scene`` adds the context both
epochs share, the kinds (``kinds/``) add their events, and ``observe`` turns the noiseless
scene into normalised stamps: Poisson + read noise, saturation, registration, PSF matching
(the sharper epoch convolved to the broader one with a Gaussian kernel that is a few
percent wrong, its variance propagated), difference = science - template, SNR =
difference / sqrt(variance); the candidate is the pixel of largest |SNR| near the centre,
the stamp is cut around it and kept when that |SNR| >= ``min_snr``; each channel of each
stamp is min-max normalised on its own, as Deep-HiTS does.

Which SNR? The design notes quote the real set's candidate SNRs (reals: median 12.3,
5th percentile 7.0), require the difference-channel maximum of >= 95 % of real stamps to
lie within 1 px of the centre, and give the whole set's pixel mean (0.437) and std
(0.211). These facts cannot all hold together:

- HiTS selects and centres candidates on a matched-filter *flux* SNR (``doastro.py``).
  Read that way, an SNR-7 point source under 4.8 px seeing peaks at ~2 sigma per pixel
  and loses the stamp maximum to the noise of the other 440 pixels: a simulation with
  flux SNRs puts only ~70 % of real maxima within 1 px, while its pixel mean rises to
  ~0.39-0.40 (std ~0.22).
- Read as *per-pixel* SNRs, the sources are prominent: ~98 % of real maxima are centred
  and classes are as separable as Deep-HiTS's 99.5 % accuracy implies, but any stamp
  with a clear positive source has min-max channel means near 0.2, which caps the whole
  set's mean near 0.32 (even a twin whose bogus stamps were pure noise would stay below
  0.40).

The generator takes the per-pixel reading: the candidate SNR is the SNR-difference
image's own value at the candidate pixel, which keeps the SNR distributions, the negative
share, the centring and the class separability of the real set, and gives up the pixel
mean and std (``python -m pipeline.bench generator`` prints all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.data.synthetic.config import (
    GAIN_E_PER_ADU,
    NAN_FILL_ADU,
    READ_NOISE_E,
    REAL_LIKE_KINDS,
    SATURATION_ADU,
    GeneratorConfig,
)
from pipeline.core.data.synthetic.optics import (
    FWHM_TO_SIGMA,
    convolve,
    gaussian_kernel_sq_sum,
    gaussian_taps,
    lanczos_resample,
    matching_sigma,
    moffat,
    moffat_peak,
    rotated,
    toeplitz,
)

TEMPLATE, SCIENCE = 0, 1

# The crop moves by at most CENTRE_SEARCH_RADIUS pixels from the canvas centre; the
# margin on each side of the stamp covers that, the Lanczos wrap-around (3 px) and the
# part of the convolution that would see the zero padding.
CENTRE_SEARCH_RADIUS = 3
CANVAS_MARGIN = 9

# Evidence = pixels where the event's own noiseless difference signal reaches this share
# of its peak (hosts and field stars are context, not evidence).
EVIDENCE_FRACTION = 0.2


def canvas_size(stamp_size: int) -> int:
    """Side (px) of the canvas a ``stamp_size`` stamp is cut from (39 for 21)."""
    return stamp_size + 2 * CANVAS_MARGIN


@dataclass
class Batch:
    """Per-stamp conditions and the noiseless images being built for one batch of B stamps.

    Arrays indexed [epoch, stamp] use epoch 0 = template, 1 = science; N is the canvas side.
    """

    rng: np.random.Generator
    cfg: GeneratorConfig
    stamp_size: int  # side (px) of the stamps cut from the canvas
    kinds: np.ndarray  # (B,) str
    fwhm: np.ndarray  # (2, B) px
    beta: np.ndarray  # (2, B) Moffat index
    ellipticity: np.ndarray  # (2, B)
    angle: np.ndarray  # (2, B) rad
    sky: np.ndarray  # (2, B) ADU
    misregistration: np.ndarray  # (2, B) science shift (dx, dy) px
    kernel_error: np.ndarray  # (B,) relative error of the matching kernel width
    host: np.ndarray  # (B,) bool
    scene: np.ndarray  # (2, B, N, N) ADU above sky, before noise
    evidence: np.ndarray  # (2, B, N, N) the event's own part of ``scene``
    after_matching: np.ndarray  # (2, B, N, N) ADU added after PSF matching (not convolved)
    masked: np.ndarray  # (B, N, N) bool, pixels with zero inverse variance
    fill: np.ndarray  # (2, B, N, N) bool, pixels overwritten by NAN_FILL_ADU
    event_xy: np.ndarray  # (2, B) canvas position of the event (x, y)

    @property
    def size(self) -> int:
        return len(self.kinds)

    @property
    def canvas_size(self) -> int:
        return canvas_size(self.stamp_size)

    @property
    def centre(self) -> int:
        """Canvas pixel (both axes) the stamp is centred on before re-centring."""
        return self.canvas_size // 2

    def noise_sigma(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx),) sky noise (ADU) of one pixel of the difference image."""
        broad = np.argmax(self.fwhm[:, idx], axis=0)
        sharp = 1 - broad
        pixel_var = self.sky / GAIN_E_PER_ADU + (READ_NOISE_E / GAIN_E_PER_ADU) ** 2
        kernel_sq = gaussian_kernel_sq_sum(matching_sigma(self.fwhm[:, idx]), self.canvas_size)
        return np.sqrt(pixel_var[broad, idx] + pixel_var[sharp, idx] * kernel_sq)

    def point_flux(self, idx: np.ndarray, snr) -> np.ndarray:
        """(len(idx),) float32 flux (ADU) of a point source whose peak pixel on the
        difference image has the given SNR (seen through the broader PSF)."""
        broad = np.argmax(self.fwhm[:, idx], axis=0)
        b, f, e = (a[broad, idx] for a in (self.beta, self.fwhm, self.ellipticity))
        return (snr * self.noise_sigma(idx) / moffat_peak(f, b, e)).astype(np.float32)

    def psf(self, epoch: int, idx, x0, y0) -> np.ndarray:
        """(len(idx), N, N) unit-flux Moffat PSF of ``epoch`` centred on (x0, y0)."""
        return moffat(
            x0, y0, self.fwhm[epoch, idx], self.beta[epoch, idx],
            self.ellipticity[epoch, idx], self.angle[epoch, idx], self.canvas_size,
        )

    def rotated(self, x0, y0, angle):
        """Canvas coordinates relative to (x0, y0), rotated: two (k, N, N) float32 arrays."""
        return rotated(x0, y0, angle, self.canvas_size)

    def add(self, epoch: int, idx, image, *, evidence: bool = True) -> None:
        """Add (len(idx), N, N) ADU to the scene of ``epoch`` (and to the evidence)."""
        self.scene[epoch, idx] += image
        if evidence:
            self.evidence[epoch, idx] += image


def new_batch(rng: np.random.Generator, kinds: np.ndarray, cfg: GeneratorConfig,
              stamp_size: int) -> Batch:
    """Draw the observing conditions of a batch of ``kinds`` (B,); the images start empty."""
    b, n = len(kinds), canvas_size(stamp_size)
    fwhm = np.clip(
        cfg.fwhm_median_px * np.exp(cfg.fwhm_log_sigma * rng.standard_normal((2, b))), 3.3, 11.0
    )
    is_real_like = np.isin(kinds, REAL_LIKE_KINDS)
    host_share = np.where(is_real_like, cfg.host_share_real, cfg.host_share_bogus)
    # The keyword arguments are evaluated in this order: it is the order of the draws.
    return Batch(
        rng=rng,
        cfg=cfg,
        stamp_size=stamp_size,
        kinds=kinds,
        fwhm=fwhm.astype(np.float32),
        beta=rng.uniform(2.5, 4.5, (2, b)).astype(np.float32),
        ellipticity=rng.uniform(0.0, 0.08, (2, b)).astype(np.float32),
        angle=rng.uniform(0.0, np.pi, (2, b)).astype(np.float32),
        sky=rng.uniform(80.0, 400.0, (2, b)).astype(np.float32),
        misregistration=(cfg.misregistration_px * rng.standard_normal((2, b))).astype(
            np.float32
        ),
        kernel_error=(cfg.kernel_error * rng.standard_normal(b)).astype(np.float32),
        host=rng.random(b) < host_share,
        scene=np.zeros((2, b, n, n), np.float32),
        evidence=np.zeros((2, b, n, n), np.float32),
        after_matching=np.zeros((2, b, n, n), np.float32),
        masked=np.zeros((b, n, n), bool),
        fill=np.zeros((2, b, n, n), bool),
        event_xy=(n // 2 + rng.uniform(-0.5, 0.5, (2, b))).astype(np.float32),
    )


def render_static_scene(batch: Batch) -> None:
    """Host galaxies and field stars: context that both epochs share."""
    rng, b = batch.rng, batch.size
    idx = np.flatnonzero(batch.host)
    if len(idx):
        real_like = np.isin(batch.kinds[idx], REAL_LIKE_KINDS)
        # Reals are injected near galaxies with offset N(0, 3 px) from the host centre.
        offset_px = np.where(real_like, 3.0, 4.0).astype(np.float32)
        hx = batch.event_xy[0, idx] + offset_px * rng.standard_normal(len(idx))
        hy = batch.event_xy[1, idx] + offset_px * rng.standard_normal(len(idx))
        add_galaxy(batch, idx, hx, hy, core=False, evidence=False)
    # Field stars lie on a ring from 7 px to 5 px short of the canvas edge (7-14 px for a
    # 21x21 stamp), so they reach into the stamp but are never cut by the canvas.
    outer_radius = float(batch.stamp_size // 2 + 4)
    for _slot in range(2):
        idx = np.flatnonzero(rng.random(b) < batch.cfg.field_star_rate)
        if not len(idx):
            continue
        radius = rng.uniform(7.0, outer_radius, len(idx))
        theta = rng.uniform(0.0, 2 * np.pi, len(idx))
        sx = batch.centre + radius * np.cos(theta)
        sy = batch.centre + radius * np.sin(theta)
        peak_sigma = np.exp(rng.normal(np.log(10.0), 1.0, len(idx)))
        flux = batch.point_flux(idx, peak_sigma)
        add_static_point(batch, idx, sx, sy, flux, evidence=False)


def add_static_point(batch: Batch, idx, x, y, flux, *, evidence, science_flux=None):
    """A source of ``flux`` (len(idx),) ADU in both epochs at canvas (x, y); the science
    copy is misregistered and has ``science_flux`` when given."""
    dx, dy = batch.misregistration[:, idx]
    science_flux = flux if science_flux is None else science_flux
    batch.add(TEMPLATE, idx, flux[:, None, None] * batch.psf(TEMPLATE, idx, x, y),
              evidence=evidence)
    batch.add(SCIENCE, idx, science_flux[:, None, None] * batch.psf(SCIENCE, idx, x + dx, y + dy),
              evidence=evidence)


def add_galaxy(batch: Batch, idx, x, y, *, core, evidence):
    """A Sersic-like galaxy seen through each epoch's seeing (both epochs, misregistered)."""
    rng, k = batch.rng, len(idx)
    if core:  # a compact, bright galaxy core: the classic bad-subtraction source
        r_e = rng.uniform(0.5, 1.5, k)
        peak_sigma = np.exp(rng.normal(np.log(60.0), 1.0, k))
    else:
        r_e = rng.uniform(1.0, 5.0, k)
        peak_sigma = np.exp(rng.normal(np.log(3.0), 0.6, k))
    sersic_n = rng.uniform(0.5, 2.0, k)
    axis_ratio = rng.uniform(0.5, 1.0, k)
    angle = rng.uniform(0.0, np.pi, k)
    sigma_sky = np.sqrt(batch.sky[TEMPLATE, idx] / GAIN_E_PER_ADU)
    for epoch in (TEMPLATE, SCIENCE):
        shift = batch.misregistration[:, idx] if epoch == SCIENCE else np.zeros((2, k))
        seeing = batch.fwhm[epoch, idx] * FWHM_TO_SIGMA
        # Seeing broadens the profile and lowers its peak, conserving flux roughly.
        r_seen = np.sqrt(r_e**2 + 1.5 * seeing**2)
        peak = peak_sigma * sigma_sky * (r_e**2 + 1.5 * 0.9**2) / r_seen**2
        u, v = batch.rotated(x + shift[0], y + shift[1], angle)
        r = np.sqrt(u**2 + (v / axis_ratio[:, None, None]) ** 2) / r_seen[:, None, None]
        b_n = (2.0 * sersic_n - 1.0 / 3.0)[:, None, None]
        profile = np.exp(-b_n * r ** (1.0 / sersic_n[:, None, None]))
        batch.add(epoch, idx, (peak[:, None, None] * profile).astype(np.float32),
                  evidence=evidence)


def observe(batch: Batch, channels: tuple[int, ...] = (0, 1, 2, 3)) -> dict:
    """Noise, saturation, PSF matching, subtraction, candidate centring, crop, normalise.

    ``channels`` indexes (template, science, difference, snr_difference), in output order.
    Returns per-stamp arrays of the batch (S = ``batch.stamp_size``, C = len(channels)):
    ``images`` (B, S, S, C) float32 in [0, 1]; ``snr`` (B,) float32; ``fwhm_template``,
    ``fwhm_science`` (B,) float32 px; ``host`` (B,) bool; ``evidence`` (B, S, S) bool;
    ``event_x``, ``event_y`` (B,) float32 stamp pixels; ``accepted`` (B,) bool.
    """
    rng, b = batch.rng, batch.size
    pixel_var = (
        np.maximum(batch.scene, 0.0) + batch.sky[:, :, None, None]
    ) / GAIN_E_PER_ADU + (READ_NOISE_E / GAIN_E_PER_ADU) ** 2
    images = batch.scene + np.sqrt(pixel_var) * rng.standard_normal(
        batch.scene.shape, dtype=np.float32
    )
    images = np.minimum(images, SATURATION_ADU - batch.sky[:, :, None, None])
    images = np.where(batch.fill, NAN_FILL_ADU, images)
    # Registration resamples the science epoch onto the template's grid with a Lanczos-3
    # kernel (HiTS ``projection.f90``). Interpolation averages neighbouring pixels, so its
    # noise becomes correlated and smaller per pixel, while the variance plane (interpolated
    # with the same, not the squared, weights, as HiTS does) keeps the old level.
    images[SCIENCE] = lanczos_resample(images[SCIENCE], rng.random((2, b), np.float32))

    # PSF matching: blur the sharper epoch with a slightly wrong Gaussian kernel.
    sharper = np.argmin(batch.fwhm, axis=0)  # (B,)
    rows = np.arange(b)
    kernel_taps = gaussian_taps(
        matching_sigma(batch.fwhm) * (1.0 + batch.kernel_error), batch.canvas_size)
    kernel = toeplitz(kernel_taps)
    kernel_sq = toeplitz(kernel_taps**2)
    matched = images.copy()
    matched[sharper, rows] = convolve(images[sharper, rows], kernel)
    matched_var = pixel_var.copy()
    matched_var[sharper, rows] = convolve(pixel_var[sharper, rows], kernel_sq)
    evidence = batch.evidence.copy()
    evidence[sharper, rows] = convolve(batch.evidence[sharper, rows], kernel)
    matched += batch.after_matching
    evidence += batch.after_matching

    difference = matched[SCIENCE] - matched[TEMPLATE]
    variance = matched_var[SCIENCE] + matched_var[TEMPLATE]
    inverse_var = np.where(batch.masked, 0.0, 1.0 / variance).astype(np.float32)
    snr_image = difference * np.sqrt(inverse_var)
    evidence_difference = np.abs(evidence[SCIENCE] - evidence[TEMPLATE])

    # The candidate: the pixel of largest |SNR| near the canvas centre.
    r, centre = CENTRE_SEARCH_RADIUS, batch.centre
    window = np.abs(snr_image[:, centre - r : centre + r + 1, centre - r : centre + r + 1])
    window = np.nan_to_num(window, nan=-1.0)
    flat = np.argmax(window.reshape(b, -1), axis=1)
    cy = centre - r + flat // (2 * r + 1)
    cx = centre - r + flat % (2 * r + 1)
    snr = snr_image[rows, cy, cx]

    half = batch.stamp_size // 2
    offsets = np.arange(-half, half + 1)
    ys = (cy[:, None] + offsets[None, :])[:, :, None]
    xs = (cx[:, None] + offsets[None, :])[:, None, :]
    crop = lambda a: a[rows[:, None, None], ys, xs]  # noqa: E731
    stamp = np.stack(
        [crop(matched[TEMPLATE]), crop(matched[SCIENCE]), crop(difference), crop(snr_image)],
        axis=-1,
    )
    evidence_stamp = crop(evidence_difference)
    peak = evidence_stamp.reshape(b, -1).max(axis=1)
    evidence_mask = (evidence_stamp >= EVIDENCE_FRACTION * peak[:, None, None]) & (
        peak[:, None, None] > 0
    )
    # Acceptance looks at all four channels whichever are returned, so that a channel
    # selection keeps the same stamps (and the same random stream) as the full output.
    accepted = (np.abs(snr) >= batch.cfg.min_snr) & np.isfinite(stamp).all(axis=(1, 2, 3))
    accepted &= evidence_mask.any(axis=(1, 2))
    # Min-max works per channel, so selecting before normalising equals selecting after.
    return {
        "images": minmax_normalise(stamp[..., list(channels)]),
        "snr": snr.astype(np.float32),
        "fwhm_template": batch.fwhm[TEMPLATE],
        "fwhm_science": batch.fwhm[SCIENCE],
        "host": batch.host,
        "evidence": evidence_mask,
        "event_x": (batch.event_xy[0] - cx + half).astype(np.float32),
        "event_y": (batch.event_xy[1] - cy + half).astype(np.float32),
        "accepted": accepted,
    }


def minmax_normalise(stamps: np.ndarray) -> np.ndarray:
    """Per-stamp, per-channel min-max to [0, 1] of (N, H, W, C); constant channels become 0.

    Returns float32 of the same shape.
    """
    lo = stamps.min(axis=(1, 2), keepdims=True)
    span = stamps.max(axis=(1, 2), keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (stamps - lo) / safe, 0.0).astype(np.float32)

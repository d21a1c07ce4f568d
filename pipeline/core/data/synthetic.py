"""A statistically faithful synthetic twin of the HiTS2013 real/bogus stamps.

The real set cannot be downloaded on the build machines, so this module simulates the
HiTS difference-imaging pipeline end to end, vectorised over a batch of stamps:

1. observing conditions per epoch (Moffat PSF, seeing, sky, gain, read noise);
2. a static scene (optional host galaxy, sparse field stars) seen through both PSFs, the
   science epoch slightly misregistered;
3. the event of the stamp's *kind* (a transient, or one of the bogus artifacts), added to
   one or both epochs;
4. Poisson + read noise, saturation, then PSF matching: the sharper epoch is convolved to
   the broader one with a Gaussian kernel that is a few percent wrong, its variance
   propagated; difference = science - template; SNR = difference / sqrt(variance);
5. the candidate is the pixel of largest |SNR| near the centre; the 21x21 stamp is cut
   around it and kept when that |SNR| >= ``min_snr``;
6. each channel of each stamp is min-max normalised on its own, as Deep-HiTS does.

Everything is pure numpy and deterministic for a seed; nothing here touches files.
The facts the numbers come from are in ``shared/design/hits-synthetic.md``.

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

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

STAMP_SIZE = 21
CHANNELS = ("template", "science", "difference", "snr_difference")

# The canvas is larger than the stamp so that convolutions and the re-centring crop never
# see the canvas edge (the crop moves by at most CENTRE_SEARCH_RADIUS pixels).
CANVAS_SIZE = 39
CENTRE_SEARCH_RADIUS = 3

GAIN_E_PER_ADU = 4.0
READ_NOISE_E = 7.0
SATURATION_ADU = 40000.0
NAN_FILL_ADU = 60000.0  # what HiTS wrote into NaN pixels
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

REAL_KIND = "real"
# Bogus kinds and their default share of the bogus class (shared/design/hits-synthetic.md).
BOGUS_SHARES = {
    "noise_excursion": 0.30,
    "bad_subtraction": 0.22,
    "variable_star": 0.08,
    "negative_point": 0.08,
    "point_like": 0.02,
    "cosmic_ray": 0.10,
    "ccd_defect": 0.10,
    "trail": 0.10,
}
KINDS = (REAL_KIND, *BOGUS_SHARES)

# Evidence = pixels where the event's own noiseless difference signal reaches this share
# of its peak (hosts and field stars are context, not evidence).
EVIDENCE_FRACTION = 0.2


@dataclass(frozen=True)
class GeneratorConfig:
    """Difficulty knobs of the generator; a preset is one instance of this.

    SNRs are per-pixel values of the SNR-difference image at the candidate pixel.
    """

    snr_scale: float = 1.0  # multiplies every drawn event SNR: < 1 is harder
    min_snr: float = 5.0  # detection threshold on |SNR| at the candidate pixel
    point_like_share: float = 0.02  # share of bogus indistinguishable from real
    label_noise: float = 0.0  # probability that a stamp's label is flipped
    host_share_real: float = 0.40
    host_share_bogus: float = 0.20
    field_star_rate: float = 0.08  # probability of each of two field-star slots
    misregistration_px: float = 0.05  # std of the science epoch's global misregistration
    kernel_error: float = 0.03  # relative std of the PSF-matching kernel width error
    fwhm_median_px: float = 4.8
    fwhm_log_sigma: float = 0.22
    # Shares of each bogus kind with a negative SNR, chosen so that about 30 % of all
    # bogus end up negative, as in the real set.
    negative_share: dict = field(
        default_factory=lambda: {
            "noise_excursion": 0.15,
            "bad_subtraction": 0.35,
            "variable_star": 0.5,
            "cosmic_ray": 0.1,
            "ccd_defect": 0.1,
            "trail": 0.1,
        }
    )


PRESETS: dict[str, GeneratorConfig] = {
    # As close to the real set as we can make it: a full CNN should pass 98 %.
    "hits": GeneratorConfig(point_like_share=0.01, label_noise=0.001),
    # The spec's 2 % of point-like bogus and a little label noise: the study's small CNN
    # lands in the 93-97 % band (it scored 94.6 % on the real set), a deep one above it.
    "default": GeneratorConfig(point_like_share=0.02, label_noise=0.002, misregistration_px=0.06),
    "hard": GeneratorConfig(
        snr_scale=0.65,
        point_like_share=0.04,
        label_noise=0.03,
        host_share_bogus=0.35,
        misregistration_px=0.15,
        kernel_error=0.06,
    ),
}


def resolve_config(preset: str = "default", **overrides) -> GeneratorConfig:
    """Return the preset's config with ``overrides`` (GeneratorConfig field names) applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown generator setting(s) {unknown}; known: {sorted(known)}")
    cfg = dataclasses.replace(PRESETS[preset], **overrides)
    if not 0.0 <= cfg.point_like_share < 1.0:
        raise ValueError(f"point_like_share must be in [0, 1), got {cfg.point_like_share}")
    if not 0.0 <= cfg.label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), got {cfg.label_noise}")
    if cfg.snr_scale <= 0 or cfg.min_snr <= 0:
        raise ValueError("snr_scale and min_snr must be positive")
    return cfg


def accuracy_ceiling(preset: str = "default", **overrides) -> float:
    """Best accuracy any classifier can reach on balanced stamps of this config.

    Point-like bogus look exactly like reals, so the best rule calls them real and is wrong
    on all of them (half the stamps are bogus); a flipped label is unpredictable. With
    label noise eta and point-like share s of the bogus class:
    error = eta + 0.5 * s * (1 - 2 * eta).
    """
    cfg = resolve_config(preset, **overrides)
    eta, share = cfg.label_noise, cfg.point_like_share
    return 1.0 - (eta + 0.5 * share * (1.0 - 2.0 * eta))


def bogus_shares(cfg: GeneratorConfig) -> dict[str, float]:
    """Share of each bogus kind, with ``point_like`` set from the config, summing to 1."""
    others = {k: v for k, v in BOGUS_SHARES.items() if k != "point_like"}
    scale = (1.0 - cfg.point_like_share) / sum(others.values())
    shares = {k: v * scale for k, v in others.items()}
    shares["point_like"] = cfg.point_like_share
    return {k: shares[k] for k in BOGUS_SHARES}


def _exact_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``total`` into integer counts by largest remainder, so shares hold exactly."""
    raw = {k: total * s for k, s in shares.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    leftover = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:leftover]:
        counts[k] += 1
    return counts


def make_stamps(
    n: int, seed: int = 0, preset: str = "default", *, progress: bool = False, **overrides
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate ``n`` HiTS-like candidate stamps, half real and half bogus.

    Parameters
    ----------
    n : number of stamps (>= 1).
    seed : seed of the generator; the same (n, seed, preset, overrides) gives the same output.
    preset : ``hits``, ``default`` or ``hard`` (see ``PRESETS``).
    progress : show a progress bar of accepted stamps (on stderr).
    **overrides : any ``GeneratorConfig`` field, e.g. ``snr_scale=0.7``.

    Returns
    -------
    images : (n, 21, 21, 4) float32 in [0, 1]; channels template, science, difference,
        SNR-difference, each min-max normalised per stamp (a constant channel becomes 0).
    labels : (n,) int64, 1 = real, 0 = bogus (after label noise).
    meta : dict of per-stamp arrays:
        ``kind`` (n,) str, one of ``KINDS``; ``snr`` (n,) float32 signed flux SNR of the
        candidate; ``fwhm_template``, ``fwhm_science`` (n,) float32 px; ``host`` (n,) bool;
        ``evidence`` (n, 21, 21) bool, pixels of the transient or artifact itself;
        ``event_x``, ``event_y`` (n,) float32, where the event was put, in stamp pixels
        (column, row; the centre pixel is 10, 10); ``label_flipped`` (n,) bool.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    cfg = resolve_config(preset, **overrides)
    rng = np.random.default_rng(seed)

    n_real = n // 2
    counts = _exact_counts(n - n_real, bogus_shares(cfg))
    plan = np.array([REAL_KIND] * n_real + [k for k, c in counts.items() for _ in range(c)])
    plan = plan[rng.permutation(n)]

    out = _allocate(n)
    pending = np.arange(n)
    bar = tqdm(total=n, unit="stamp", desc="synthetic stamps", disable=not progress,
               mininterval=1.0)
    for _attempt in range(50):
        for start in range(0, len(pending), _CHUNK):
            idx = pending[start : start + _CHUNK]
            batch = _render(rng, plan[idx], cfg)
            for key, value in batch.items():
                out[key][idx] = value
            bar.update(int(batch["accepted"].sum()))
        pending = pending[~out["accepted"][pending]]
        if len(pending) == 0:
            break
    else:
        bar.close()
        raise RuntimeError(
            f"{len(pending)} stamps never reached |SNR| >= {cfg.min_snr}; the config is "
            "too faint to simulate"
        )

    bar.close()
    real = plan == REAL_KIND
    flipped = rng.random(n) < cfg.label_noise
    labels = np.where(real ^ flipped, 1, 0).astype(np.int64)
    meta = {
        "kind": plan.astype("<U16"),
        "snr": out["snr"],
        "fwhm_template": out["fwhm_template"],
        "fwhm_science": out["fwhm_science"],
        "host": out["host"],
        "evidence": out["evidence"],
        "event_x": out["event_x"],
        "event_y": out["event_y"],
        "label_flipped": flipped,
    }
    return out["images"], labels, meta


_CHUNK = 1024


def _allocate(n: int) -> dict[str, np.ndarray]:
    s = STAMP_SIZE
    return {
        "images": np.zeros((n, s, s, len(CHANNELS)), np.float32),
        "snr": np.zeros(n, np.float32),
        "fwhm_template": np.zeros(n, np.float32),
        "fwhm_science": np.zeros(n, np.float32),
        "host": np.zeros(n, bool),
        "evidence": np.zeros((n, s, s), bool),
        "event_x": np.zeros(n, np.float32),
        "event_y": np.zeros(n, np.float32),
        "accepted": np.zeros(n, bool),
    }


# ----------------------------------------------------------------------------------------
# Rendering one batch
# ----------------------------------------------------------------------------------------

_COORDS = np.arange(CANVAS_SIZE, dtype=np.float32)
_CENTRE = CANVAS_SIZE // 2
TEMPLATE, SCIENCE = 0, 1


@dataclass
class _Batch:
    """Per-stamp conditions and the noiseless images being built for one batch of B stamps.

    Arrays indexed [epoch, stamp] use epoch 0 = template, 1 = science.
    """

    rng: np.random.Generator
    cfg: GeneratorConfig
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

    def noise_sigma(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx),) sky noise (ADU) of one pixel of the difference image."""
        broad = np.argmax(self.fwhm[:, idx], axis=0)
        sharp = 1 - broad
        pixel_var = self.sky / GAIN_E_PER_ADU + (READ_NOISE_E / GAIN_E_PER_ADU) ** 2
        kernel_sq = _gaussian_kernel_sq_sum(_matching_sigma(self.fwhm[:, idx]))
        return np.sqrt(pixel_var[broad, idx] + pixel_var[sharp, idx] * kernel_sq)

    def point_flux(self, idx: np.ndarray, snr) -> np.ndarray:
        """(len(idx),) float32 flux (ADU) of a point source whose peak pixel on the
        difference image has the given SNR (seen through the broader PSF)."""
        broad = np.argmax(self.fwhm[:, idx], axis=0)
        b, f, e = (a[broad, idx] for a in (self.beta, self.fwhm, self.ellipticity))
        return (snr * self.noise_sigma(idx) / _moffat_peak(f, b, e)).astype(np.float32)

    def psf(self, epoch: int, idx, x0, y0) -> np.ndarray:
        """(len(idx), N, N) unit-flux Moffat PSF of ``epoch`` centred on (x0, y0)."""
        return _moffat(
            x0, y0, self.fwhm[epoch, idx], self.beta[epoch, idx],
            self.ellipticity[epoch, idx], self.angle[epoch, idx],
        )

    def add(self, epoch: int, idx, image, *, evidence: bool = True) -> None:
        self.scene[epoch, idx] += image
        if evidence:
            self.evidence[epoch, idx] += image


def _render(rng: np.random.Generator, kinds: np.ndarray, cfg: GeneratorConfig) -> dict:
    """Render a batch of stamps of the given kinds; see ``make_stamps`` for the outputs."""
    b, n = len(kinds), CANVAS_SIZE
    fwhm = np.clip(
        cfg.fwhm_median_px * np.exp(cfg.fwhm_log_sigma * rng.standard_normal((2, b))), 3.3, 11.0
    )
    is_real_like = np.isin(kinds, (REAL_KIND, "point_like"))
    host_share = np.where(is_real_like, cfg.host_share_real, cfg.host_share_bogus)
    batch = _Batch(
        rng=rng,
        cfg=cfg,
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
        event_xy=(_CENTRE + rng.uniform(-0.5, 0.5, (2, b))).astype(np.float32),
    )
    # Kinds first adjust conditions (misregistration, kernel error), then the static scene
    # is drawn, then the events themselves.
    for kind, (prepare, _render_event) in _KIND_RENDERERS.items():
        idx = np.flatnonzero(kinds == kind)
        if len(idx) and prepare is not None:
            prepare(batch, idx)
    _render_static_scene(batch)
    for kind, (_prepare, render_event) in _KIND_RENDERERS.items():
        idx = np.flatnonzero(kinds == kind)
        if len(idx):
            render_event(batch, idx)
    return _observe(batch)


def _render_static_scene(batch: _Batch) -> None:
    """Host galaxies and field stars: context that both epochs share."""
    rng, b = batch.rng, batch.size
    idx = np.flatnonzero(batch.host)
    if len(idx):
        real_like = np.isin(batch.kinds[idx], (REAL_KIND, "point_like"))
        # Reals are injected near galaxies with offset N(0, 3 px) from the host centre.
        offset_px = np.where(real_like, 3.0, 4.0).astype(np.float32)
        hx = batch.event_xy[0, idx] + offset_px * rng.standard_normal(len(idx))
        hy = batch.event_xy[1, idx] + offset_px * rng.standard_normal(len(idx))
        _add_galaxy(batch, idx, hx, hy, core=False, evidence=False)
    for _slot in range(2):
        idx = np.flatnonzero(rng.random(b) < batch.cfg.field_star_rate)
        if not len(idx):
            continue
        radius = rng.uniform(7.0, 14.0, len(idx))
        theta = rng.uniform(0.0, 2 * np.pi, len(idx))
        sx = _CENTRE + radius * np.cos(theta)
        sy = _CENTRE + radius * np.sin(theta)
        peak_sigma = np.exp(rng.normal(np.log(10.0), 1.0, len(idx)))
        flux = batch.point_flux(idx, peak_sigma)
        _add_static_point(batch, idx, sx, sy, flux, evidence=False)


def _add_static_point(batch, idx, x, y, flux, *, evidence, science_flux=None):
    """A source in both epochs; the science copy is misregistered."""
    dx, dy = batch.misregistration[:, idx]
    science_flux = flux if science_flux is None else science_flux
    batch.add(TEMPLATE, idx, flux[:, None, None] * batch.psf(TEMPLATE, idx, x, y),
              evidence=evidence)
    batch.add(SCIENCE, idx, science_flux[:, None, None] * batch.psf(SCIENCE, idx, x + dx, y + dy),
              evidence=evidence)


def _add_galaxy(batch, idx, x, y, *, core, evidence):
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
        u, v = _rotated(x + shift[0], y + shift[1], angle)
        r = np.sqrt(u**2 + (v / axis_ratio[:, None, None]) ** 2) / r_seen[:, None, None]
        b_n = (2.0 * sersic_n - 1.0 / 3.0)[:, None, None]
        profile = np.exp(-b_n * r ** (1.0 / sersic_n[:, None, None]))
        batch.add(epoch, idx, (peak[:, None, None] * profile).astype(np.float32),
                  evidence=evidence)


def _rotated(x0, y0, angle):
    """Canvas coordinates relative to (x0, y0), rotated by ``angle``: two (k, N, N) arrays."""
    dx = _COORDS[None, None, :] - np.asarray(x0, np.float32)[:, None, None]
    dy = _COORDS[None, :, None] - np.asarray(y0, np.float32)[:, None, None]
    c = np.cos(angle).astype(np.float32)[:, None, None]
    s = np.sin(angle).astype(np.float32)[:, None, None]
    return dx * c + dy * s, -dx * s + dy * c


def _moffat(x0, y0, fwhm, beta, ellipticity, angle) -> np.ndarray:
    """(k, N, N) float32 unit-flux elliptical Moffat profiles sampled at pixel centres."""
    beta = np.asarray(beta, np.float32)[:, None, None]
    alpha = (np.asarray(fwhm, np.float32)[:, None, None]
             / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)))
    q = (1.0 - np.asarray(ellipticity, np.float32))[:, None, None]
    u, v = _rotated(x0, y0, angle)
    r2 = (u * u + (v / q) ** 2) / (alpha * alpha)
    norm = (beta - 1.0) / (np.pi * alpha * alpha * q)
    return (norm * np.exp(-beta * np.log1p(r2))).astype(np.float32)


def _moffat_peak(fwhm, beta, ellipticity) -> np.ndarray:
    """Central value of the unit-flux Moffat profile."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return (beta - 1.0) / (np.pi * alpha**2 * (1.0 - ellipticity))


def _matching_sigma(fwhm: np.ndarray) -> np.ndarray:
    """(B,) Gaussian width (px) that blurs the sharper epoch to the broader one."""
    sigma = fwhm * FWHM_TO_SIGMA
    return np.sqrt(np.maximum(sigma.max(axis=0) ** 2 - sigma.min(axis=0) ** 2, 0.0))


def _gaussian_kernel_sq_sum(sigma: np.ndarray) -> np.ndarray:
    """Sum of squares of the discrete unit-sum 2-D Gaussian kernel with width ``sigma``."""
    taps = _gaussian_taps(sigma)
    return np.sum(taps**2, axis=-1) ** 2


_TAP_OFFSETS = np.arange(-CANVAS_SIZE + 1, CANVAS_SIZE, dtype=np.float32)


def _gaussian_taps(sigma: np.ndarray) -> np.ndarray:
    """(B, 2N-1) unit-sum 1-D Gaussian taps; sigma -> 0 gives the identity kernel."""
    s = np.maximum(np.asarray(sigma, np.float32), 1e-3)[:, None]
    taps = np.exp(-0.5 * (_TAP_OFFSETS[None, :] / s) ** 2)
    taps /= taps.sum(axis=1, keepdims=True)
    # Far taps are denormal floats, which make matrix products ~10x slower.
    return np.where(taps < 1e-12, 0.0, taps).astype(np.float32)


def _toeplitz(taps: np.ndarray) -> np.ndarray:
    """(B, N, N) matrices M with M[i, j] = taps[j - i]: M @ X convolves X's columns."""
    n = CANVAS_SIZE
    index = np.arange(n)[None, :] - np.arange(n)[:, None] + n - 1
    return np.ascontiguousarray(taps[:, index])


def _convolve(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Separable convolution of (B, N, N) images with a symmetric kernel, zero padding.

    ``matrix`` is symmetric (a symmetric kernel's Toeplitz matrix), so M X M^T = M X M,
    which keeps both products on contiguous arrays (a transposed view is ~10x slower).
    """
    return matrix @ images.astype(np.float32, copy=False) @ matrix


def _observe(batch: _Batch) -> dict:
    """Noise, saturation, PSF matching, subtraction, candidate centring, crop, normalise."""
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
    images[SCIENCE] = _lanczos_resample(images[SCIENCE], rng.random((2, b), np.float32))

    # PSF matching: blur the sharper epoch with a slightly wrong Gaussian kernel.
    sharper = np.argmin(batch.fwhm, axis=0)  # (B,)
    rows = np.arange(b)
    kernel_taps = _gaussian_taps(_matching_sigma(batch.fwhm) * (1.0 + batch.kernel_error))
    kernel = _toeplitz(kernel_taps)
    kernel_sq = _toeplitz(kernel_taps**2)
    matched = images.copy()
    matched[sharper, rows] = _convolve(images[sharper, rows], kernel)
    matched_var = pixel_var.copy()
    matched_var[sharper, rows] = _convolve(pixel_var[sharper, rows], kernel_sq)
    evidence = batch.evidence.copy()
    evidence[sharper, rows] = _convolve(batch.evidence[sharper, rows], kernel)
    matched += batch.after_matching
    evidence += batch.after_matching

    difference = matched[SCIENCE] - matched[TEMPLATE]
    variance = matched_var[SCIENCE] + matched_var[TEMPLATE]
    inverse_var = np.where(batch.masked, 0.0, 1.0 / variance).astype(np.float32)
    snr_image = difference * np.sqrt(inverse_var)
    evidence_difference = np.abs(evidence[SCIENCE] - evidence[TEMPLATE])

    # The candidate: the pixel of largest |SNR| near the canvas centre.
    r = CENTRE_SEARCH_RADIUS
    window = np.abs(snr_image[:, _CENTRE - r : _CENTRE + r + 1, _CENTRE - r : _CENTRE + r + 1])
    window = np.nan_to_num(window, nan=-1.0)
    flat = np.argmax(window.reshape(b, -1), axis=1)
    cy = _CENTRE - r + flat // (2 * r + 1)
    cx = _CENTRE - r + flat % (2 * r + 1)
    snr = snr_image[rows, cy, cx]

    half = STAMP_SIZE // 2
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
    accepted = (np.abs(snr) >= batch.cfg.min_snr) & np.isfinite(stamp).all(axis=(1, 2, 3))
    accepted &= evidence_mask.any(axis=(1, 2))
    return {
        "images": minmax_normalise(stamp),
        "snr": snr.astype(np.float32),
        "fwhm_template": batch.fwhm[TEMPLATE],
        "fwhm_science": batch.fwhm[SCIENCE],
        "host": batch.host,
        "evidence": evidence_mask,
        "event_x": (batch.event_xy[0] - cx + half).astype(np.float32),
        "event_y": (batch.event_xy[1] - cy + half).astype(np.float32),
        "accepted": accepted,
    }


LANCZOS_ORDER = 3


def _lanczos_resample(images: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Lanczos interpolation of (B, N, N) images at sub-pixel offsets ``fraction`` (2, B) in
    [0, 1) along x and y, the weights normalised to unit sum as HiTS does; the outermost
    rows/columns wrap (they are cropped away). Done as two batched matrix products."""
    a, n, b = LANCZOS_ORDER, images.shape[-1], images.shape[0]
    taps = np.arange(1 - a, a + 1)
    pixels = np.arange(n)
    matrices = []
    for f in fraction:  # x, then y
        dist = f[None, :] - taps[:, None]  # (2a, B)
        weights = np.sinc(dist) * np.sinc(dist / a)
        weights = (weights / weights.sum(axis=0)).astype(np.float32)
        matrix = np.zeros((b, n, n), np.float32)  # out[i] = sum_k w_k in[i + k]
        for k, w in zip(taps, weights, strict=True):
            matrix[:, pixels, (pixels + k) % n] = w[:, None]
        matrices.append(matrix)
    along_x = images @ np.ascontiguousarray(matrices[0].transpose(0, 2, 1))
    return matrices[1] @ along_x


def minmax_normalise(stamps: np.ndarray) -> np.ndarray:
    """Per-stamp, per-channel min-max to [0, 1] of (N, H, W, C); constant channels become 0."""
    lo = stamps.min(axis=(1, 2), keepdims=True)
    span = stamps.max(axis=(1, 2), keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (stamps - lo) / safe, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------
# The kinds: an optional ``prepare`` (adjusts conditions before the scene is drawn) and a
# ``render`` (adds the event). Each works on the batch rows ``idx`` of its kind.
# ----------------------------------------------------------------------------------------


def _signs(batch: _Batch, idx, kind: str) -> np.ndarray:
    p = batch.cfg.negative_share.get(kind, 0.0)
    return np.where(batch.rng.random(len(idx)) < p, -1.0, 1.0).astype(np.float32)


def _split_lognormal(rng, size, median, sigma_low, sigma_high) -> np.ndarray:
    z = rng.standard_normal(size)
    return median * np.exp(np.where(z < 0, sigma_low, sigma_high) * z)


def _subpixel(batch, idx):
    """Canvas (x, y) of the events of rows ``idx``: the centre, at a sub-pixel offset."""
    return batch.event_xy[0, idx], batch.event_xy[1, idx]


def _render_point_transient(batch: _Batch, idx) -> None:
    """A new point source in the science epoch (real, and bogus that looks real)."""
    # Real set: SNR median 12.3, 5th-95th percentile 7.0-45.9 (Deep-HiTS predictions).
    snr = _split_lognormal(batch.rng, len(idx), 12.6, 0.34, 0.92) * batch.cfg.snr_scale
    snr = np.clip(snr, 0.9 * batch.cfg.min_snr, 250.0)
    x, y = _subpixel(batch, idx)
    flux = batch.point_flux(idx, snr)
    batch.add(SCIENCE, idx, flux[:, None, None] * batch.psf(SCIENCE, idx, x, y))


def _render_negative_point(batch: _Batch, idx) -> None:
    """A source in the template only: it faded or moved away."""
    snr = np.exp(batch.rng.normal(np.log(7.5), 0.5, len(idx))) * batch.cfg.snr_scale
    x, y = _subpixel(batch, idx)
    flux = batch.point_flux(idx, snr)
    batch.add(TEMPLATE, idx, flux[:, None, None] * batch.psf(TEMPLATE, idx, x, y))


def _render_variable_star(batch: _Batch, idx) -> None:
    """A star in both epochs whose flux changed, either sign."""
    rng, k = batch.rng, len(idx)
    change = _signs(batch, idx, "variable_star") * np.exp(rng.normal(np.log(7.5), 0.6, k))
    change = batch.point_flux(idx, change * batch.cfg.snr_scale)
    base = batch.point_flux(idx, np.exp(rng.normal(np.log(15.0), 0.7, k)))
    base = np.maximum(base, 1.3 * np.abs(change))  # a fading star cannot go below zero
    x, y = _subpixel(batch, idx)
    _add_static_point(batch, idx, x, y, base.astype(np.float32),
                      evidence=True, science_flux=(base + change).astype(np.float32))


def _render_noise_excursion(batch: _Batch, idx) -> None:
    """No source: a lumpy correlated-noise blob of |SNR| 5-8 on the difference image."""
    rng, k = batch.rng, len(idx)
    snr = rng.uniform(4.0, 7.0, k) * np.sqrt(batch.cfg.snr_scale)
    sign = _signs(batch, idx, "noise_excursion")
    x, y = _subpixel(batch, idx)
    psf_sigma = batch.fwhm[:, idx].max(axis=0) * FWHM_TO_SIGMA
    blob = np.zeros((k, CANVAS_SIZE, CANVAS_SIZE), np.float32)
    for _lump in range(3):  # irregular: a few offset, elongated lumps
        width = psf_sigma * rng.uniform(0.35, 0.8, k)
        u, v = _rotated(x + rng.normal(0, 1.0, k), y + rng.normal(0, 1.0, k),
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


def _prepare_bad_subtraction(batch: _Batch, idx) -> None:
    rng, k = batch.rng, len(idx)
    shift = rng.uniform(0.15, 0.8, k)
    theta = rng.uniform(0, 2 * np.pi, k)
    batch.misregistration[:, idx] = shift * np.cos(theta), shift * np.sin(theta)
    wrong_kernel = rng.random(k) < 0.5
    batch.kernel_error[idx] = np.where(
        wrong_kernel, rng.choice([-1.0, 1.0], k) * rng.uniform(0.1, 0.3, k),
        batch.kernel_error[idx])


def _render_bad_subtraction(batch: _Batch, idx) -> None:
    """A bright star or galaxy core in both epochs that does not subtract cleanly."""
    rng, k = batch.rng, len(idx)
    x, y = _subpixel(batch, idx)
    core = rng.random(k) < 0.3
    if core.any():
        _add_galaxy(batch, idx[core], x[core], y[core], core=True, evidence=True)
    star = ~core
    if star.any():
        s = idx[star]
        peak_sigma = np.exp(rng.normal(np.log(30.0), 1.4, len(s)))
        flux = batch.point_flux(s, peak_sigma)
        # A photometric scaling error between the epochs sets the residual's sign.
        scale = 1.0 + _signs(batch, s, "bad_subtraction") * rng.uniform(0.02, 0.08, len(s))
        _add_static_point(batch, s, x[star], y[star], flux, evidence=True,
                          science_flux=(flux * scale).astype(np.float32))


def _render_cosmic_ray(batch: _Batch, idx) -> None:
    """A sharp hot pixel or 2-6 px track, not seen through the PSF, mostly in the science."""
    rng, k = batch.rng, len(idx)
    sign = _signs(batch, idx, "cosmic_ray")
    x, y = _subpixel(batch, idx)
    length = np.where(rng.random(k) < 0.3, 0.0, rng.uniform(1.0, 5.0, k))
    theta = rng.uniform(0, np.pi, k)
    track = _segment(x, y, theta, length, width=0.55)
    track *= rng.uniform(0.5, 1.0, track.shape).astype(np.float32)
    track /= np.maximum(track.max(axis=(1, 2), keepdims=True), 1e-6)
    snr = np.exp(rng.normal(np.log(10.0), 0.8, k)) * batch.cfg.snr_scale
    amplitude = snr * batch.noise_sigma(idx)
    epoch = np.where(sign > 0, SCIENCE, TEMPLATE)
    image = (amplitude[:, None, None] * track).astype(np.float32)
    for e in (TEMPLATE, SCIENCE):
        rows = epoch == e
        batch.add(e, idx[rows], image[rows])


def _segment(x, y, theta, length, width) -> np.ndarray:
    """(k, N, N) float32, 1 within ``width`` px of a segment centred on (x, y), else 0."""
    u, v = _rotated(x, y, theta)
    half = (np.asarray(length, np.float32) / 2.0)[:, None, None]
    along = np.maximum(np.abs(u) - half, 0.0)
    return ((along**2 + v**2) <= width**2).astype(np.float32)


def _render_ccd_defect(batch: _Batch, idx) -> None:
    """A bad column or row, a saturated star with a bleed trail, or a masked CCD edge."""
    rng, k = batch.rng, len(idx)
    x, y = _subpixel(batch, idx)
    subtype = rng.choice(3, size=k, p=[0.55, 0.25, 0.2])
    sign = _signs(batch, idx, "ccd_defect")
    canvas = np.arange(CANVAS_SIZE)

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
        _add_static_point(batch, s, x[bleed], y[bleed], flux, evidence=True)
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


def _render_trail(batch: _Batch, idx) -> None:
    """A satellite/asteroid trail (PSF-wide) or a thin diffraction spike, in one epoch."""
    rng, k = batch.rng, len(idx)
    sign = _signs(batch, idx, "trail")
    x, y = _subpixel(batch, idx)
    theta = rng.uniform(0, np.pi, k)
    spike = rng.random(k) < 0.4
    width = np.where(spike, 0.5, batch.fwhm[SCIENCE, idx] * FWHM_TO_SIGMA)
    _along, v = _rotated(x, y, theta)
    line = np.exp(-0.5 * (v / width[:, None, None]) ** 2) / (np.sqrt(2 * np.pi) * width[
        :, None, None])
    line /= line.max(axis=(1, 2), keepdims=True)
    snr = np.exp(rng.normal(np.log(8.0), 0.7, k)) * batch.cfg.snr_scale
    image = ((snr * batch.noise_sigma(idx))[:, None, None] * line).astype(np.float32)
    epoch = np.where(sign > 0, SCIENCE, TEMPLATE)
    for e in (TEMPLATE, SCIENCE):
        batch.add(e, idx[epoch == e], image[epoch == e])


_KIND_RENDERERS: dict[str, tuple[Callable | None, Callable]] = {
    REAL_KIND: (None, _render_point_transient),
    "noise_excursion": (None, _render_noise_excursion),
    "bad_subtraction": (_prepare_bad_subtraction, _render_bad_subtraction),
    "variable_star": (None, _render_variable_star),
    "negative_point": (None, _render_negative_point),
    "point_like": (None, _render_point_transient),
    "cosmic_ray": (None, _render_cosmic_ray),
    "ccd_defect": (None, _render_ccd_defect),
    "trail": (None, _render_trail),
}

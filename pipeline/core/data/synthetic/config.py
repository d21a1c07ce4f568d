"""Settings of the synthetic twin: presets, the kinds of stamp and their shares, the camera.

Nothing here draws random numbers; the numbers come from ``shared/design/hits-synthetic.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.core.geometry import HITS_CHANNELS

# Default geometry of the output: 21x21 stamps of four channels, as in HiTS2013.
STAMP_SIZE = 21
CHANNELS = HITS_CHANNELS  # the channels HiTS stamps have, in their order

# The camera (DECam as HiTS reduced it).
GAIN_E_PER_ADU = 4.0
READ_NOISE_E = 7.0
SATURATION_ADU = 40000.0
NAN_FILL_ADU = 60000.0  # what HiTS wrote into NaN pixels

REAL_KIND = "real"
# Bogus kinds and their default share of the bogus class. The first guess of
# shared/design/hits-synthetic.md (0.30, 0.22, 0.08, 0.08, 0.02, 0.10, 0.10, 0.10) made the
# bogus class far more real-looking to the classifiers trained on the real set than the
# real bogus were (they call any compact positive PSF-wide blob real): the mix below has
# fewer PSF-shaped positive residuals (bad subtractions, variable stars) and more
# pixel-scale artefacts, and holds both witnesses' real-data view at once
# (docs/synthetic-twin.md, "Witness calibration").
BOGUS_SHARES = {
    "noise_excursion": 0.34,
    "bad_subtraction": 0.10,
    "variable_star": 0.03,
    "negative_point": 0.12,
    "point_like": 0.01,
    "cosmic_ray": 0.20,
    "ccd_defect": 0.12,
    "trail": 0.08,
}
KINDS = (REAL_KIND, *BOGUS_SHARES)
# Kinds drawn as a new point source in the science epoch: indistinguishable by design.
REAL_LIKE_KINDS = (REAL_KIND, "point_like")


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
    # Noise excursions: width of each lump, as shares of the PSF sigma (low, high):
    # pixel-scale (0.1-0.4 px), as per-pixel 5-8 sigma outliers of the difference's noise
    # are; PSF-wide lumps (0.35-0.8, the first guess) read as real sources to real-data nets.
    excursion_width: tuple = (0.05, 0.2)
    # Bad subtractions of stars: the photometric scale error between the epochs (low,
    # high) and the science epoch's misregistration in px (low, high).
    subtraction_scale_error: tuple = (0.02, 0.08)
    subtraction_shift_px: tuple = (0.15, 0.8)
    # Trails: share that are thin diffraction spikes rather than PSF-wide trails.
    spike_share: float = 0.9
    # Shares of each bogus kind with a negative SNR, chosen so that about 30 % of all
    # bogus end up negative, as in the real set.
    negative_share: dict = field(
        default_factory=lambda: {
            "noise_excursion": 0.20,  # 0.15 with the first-guess mix
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
    # hits made harder for a net trained on the twin: the twin's bogus are cleaner than the
    # real set's (a twin-trained seed net scores ~97 % on hits-like stamps, the study's
    # real-trained one 94.6 % on the real set), so more point-like bogus (4 %) and label
    # noise (0.5 %) bring the study's small CNN into the 93-97 % band, a deep one above it.
    "default": GeneratorConfig(point_like_share=0.04, label_noise=0.005, misregistration_px=0.06),
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

"""Summary statistics of a stamp set, and the synthetic twin's calibration figures."""

from __future__ import annotations

import numpy as np

from pipeline.core.data.synthetic import CHANNELS

# The real HiTS2013 figures the twin is checked against (shared/design/hits-synthetic.md).
REAL_SET = {
    "pixel_mean": 0.437,
    "pixel_std": 0.211,
    "bogus_negative_share": 0.305,
    "real_snr_p05": 7.0,
    "real_snr_p50": 12.3,
    "real_snr_p95": 45.9,
    "bogus_abs_snr_p50": 7.8,
    "bogus_abs_snr_over_1000_share": 0.024,
}


def describe_stamps(images: np.ndarray, labels: np.ndarray,
                    channel_names: tuple[str, ...] | None = None) -> dict:
    """Counts, class balance and pixel statistics of (N, H, W, C) stamps in [0, 1].

    ``channel_names`` (C,) names the per-channel figures; by default the generator's
    ``CHANNELS`` when C is 4, else the channel indices.
    """
    n = len(labels)
    channel_mean = images.mean(axis=(0, 1, 2), dtype=np.float64)
    channel_std = images.std(axis=(0, 1, 2), dtype=np.float64)
    if channel_names is not None:
        if len(channel_names) != images.shape[-1]:
            raise ValueError(f"{len(channel_names)} channel_names for "
                             f"{images.shape[-1]} channels")
        names = channel_names
    else:
        names = CHANNELS if images.shape[-1] == len(CHANNELS) else range(images.shape[-1])
    return {
        "n": int(n),
        "n_real": int((labels == 1).sum()),
        "n_bogus": int((labels == 0).sum()),
        "real_share": float((labels == 1).mean()) if n else 0.0,
        "pixel_mean": float(images.mean(dtype=np.float64)),
        "pixel_std": float(images.std(dtype=np.float64)),
        "channel_mean": {str(k): float(v) for k, v in zip(names, channel_mean, strict=True)},
        "channel_std": {str(k): float(v) for k, v in zip(names, channel_std, strict=True)},
    }


def centre_offset(images: np.ndarray, channel: int) -> np.ndarray:
    """(N,) Chebyshev distance (px) of each stamp's maximum in ``channel`` from the centre
    of (N, S, S, C) stamps (S odd)."""
    size = images.shape[2]
    flat = images[..., channel].reshape(len(images), -1).argmax(axis=1)
    centre = size // 2
    rows, cols = np.divmod(flat, size)
    return np.maximum(np.abs(rows - centre), np.abs(cols - centre))


def calibration_figures(images: np.ndarray, labels: np.ndarray, meta: dict) -> dict:
    """The figures that compare a synthetic set with the real HiTS2013 set.

    Uses the true kinds (``meta["kind"]``), not the possibly flipped labels.
    """
    kind, snr = meta["kind"], meta["snr"]
    real = kind == "real"
    bogus = ~real
    abs_bogus = np.abs(snr[bogus])
    real_snr = snr[real]
    return {
        "pixel_mean": float(images.mean(dtype=np.float64)),
        "pixel_std": float(images.std(dtype=np.float64)),
        "real_pixel_mean": float(images[real].mean(dtype=np.float64)) if real.any() else None,
        "bogus_pixel_mean": float(images[bogus].mean(dtype=np.float64)) if bogus.any() else None,
        "bogus_negative_share": float((snr[bogus] < 0).mean()) if bogus.any() else None,
        "real_diff_max_within_1px": (
            float((centre_offset(images[real], 2) <= 1).mean()) if real.any() else None
        ),
        "real_snr_p05": float(np.percentile(real_snr, 5)) if real.any() else None,
        "real_snr_p50": float(np.percentile(real_snr, 50)) if real.any() else None,
        "real_snr_p95": float(np.percentile(real_snr, 95)) if real.any() else None,
        "bogus_abs_snr_p50": float(np.median(abs_bogus)) if bogus.any() else None,
        "bogus_abs_snr_over_1000_share": float((abs_bogus > 1000).mean()) if bogus.any() else None,
        "kind_counts": {str(k): int(c) for k, c in zip(*np.unique(kind, return_counts=True),
                                                      strict=True)},
    }

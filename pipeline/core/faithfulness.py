"""Whether a map tells the truth about the classifier, and where it points: pure functions.

- Deletion curve: remove the pixels in the map's order of importance (highest value first,
  set to the occlusion fill value in every channel), re-classify, and track the target
  class's probability; a map that ranks the real evidence first makes it fall fast, so a
  SMALLER area under the curve is better.
- Localisation (synthetic data, whose generator records where the evidence is): the
  pointing game (does the map's maximum fall inside the evidence mask?) and the share of
  the map's positive mass inside the mask.
- Rank correlation of two maps (Spearman), for the weight-randomisation sanity check.

Maps are (N, H, W) raw; stamps (N, H, W, C); masks (N, H, W) bool.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def deletion_order(maps: np.ndarray) -> np.ndarray:
    """(N, H*W) pixel indices of each map, most important (highest value) first; ties in
    pixel order, so the order is deterministic."""
    flat = np.asarray(maps).reshape(len(maps), -1)
    return np.argsort(-flat, axis=1, kind="stable")


def deletion_curves(predict_fn: Callable, stamps: np.ndarray, maps: np.ndarray,
                    target: np.ndarray, *, steps: int = 21, fill: float = 0.0,
                    batch_size: int = 4096) -> np.ndarray:
    """(N, steps + 1) probability of the target class after removing 0, 1/steps, ..., all
    of each stamp's pixels in its map's order of importance.

    ``predict_fn`` maps stamps (B, H, W, C) to probabilities (B, K) (numpy in and out).
    Removal after step s covers the first round(s * H * W / steps) pixels of the order.
    """
    stamps = np.asarray(stamps, np.float32)
    n, height, width, _ = stamps.shape
    pixels = height * width
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if np.asarray(maps).shape != (n, height, width):
        raise ValueError(f"maps must be (N, H, W) = {(n, height, width)}, got "
                         f"{np.asarray(maps).shape}")
    order = deletion_order(maps)
    counts = np.rint(np.arange(steps + 1) * pixels / steps).astype(int)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(pixels)[None].repeat(n, 0), axis=1)
    curves = np.zeros((n, steps + 1))
    target = np.asarray(target)
    for start in range(0, n, max(1, batch_size // (steps + 1))):
        stop = min(start + max(1, batch_size // (steps + 1)), n)
        removed = ranks[start:stop, None, :] < counts[None, :, None]  # (m, S+1, HW)
        removed = removed.reshape(stop - start, steps + 1, height, width, 1)
        copies = np.where(removed, np.float32(fill), stamps[start:stop, None])
        probabilities = np.asarray(predict_fn(copies.reshape(-1, height, width,
                                                             stamps.shape[-1])))
        probabilities = probabilities.reshape(stop - start, steps + 1, -1)
        curves[start:stop] = np.take_along_axis(
            probabilities, target[start:stop, None, None].astype(int), axis=2)[..., 0]
    return curves


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """(N,) trapezoidal area under each curve over the removed fraction 0 ... 1."""
    curves = np.asarray(curves, np.float64)
    steps = curves.shape[1] - 1
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2 * steps)


def random_maps(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(N, H, W) uniform random maps: the no-information baseline of a deletion curve."""
    return np.random.default_rng(seed).random((n, height, width))


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) 1.0 where the map's maximum (first in pixel order on ties) lies inside the
    mask, 0.0 where not, NaN where the mask is empty (no evidence recorded)."""
    flat = np.asarray(maps).reshape(len(maps), -1)
    masks = np.asarray(masks, bool).reshape(len(flat), -1)
    hit = masks[np.arange(len(flat)), flat.argmax(axis=1)].astype(float)
    return np.where(masks.any(axis=1), hit, np.nan)


def positive_mass_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) share of the map's positive mass (sum of max(d, 0)) inside the mask; NaN where
    the map has no positive value or the mask is empty."""
    positive = np.maximum(np.asarray(maps, np.float64).reshape(len(maps), -1), 0.0)
    masks = np.asarray(masks, bool).reshape(len(positive), -1)
    total = positive.sum(axis=1)
    inside = (positive * masks).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = inside / total
    return np.where((total > 0) & masks.any(axis=1), share, np.nan)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Spearman rank correlation of each pair of maps (average ranks on ties); NaN
    where either map is constant."""
    from scipy.stats import rankdata

    from pipeline.core.fidelity import pearson_r

    ranks_a = rankdata(np.asarray(a).reshape(len(a), -1), axis=1)
    ranks_b = rankdata(np.asarray(b).reshape(len(b), -1), axis=1)
    return pearson_r(ranks_a, ranks_b)

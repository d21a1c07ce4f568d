"""How close estimated occlusion maps are to the exact ones: pure functions on arrays.

Every figure is computed per map, then summarised overall, per true class, per predicted
class and per map-amplitude bin, beside two baselines on the same stamps: the zero map and
the class-mean map (the mean exact map of the TRAINING stamps of the same predicted class).
Why the baselines: maps are stereotyped (a central blob), so the class-mean map alone
already correlates well with most maps, and SSIM is near 1 for near-zero maps whatever one
predicts. The headline figures are therefore taken over the non-trivial maps (amplitude
``max |d| >= 0.05``), per true class, and as an MSE skill score over the class-mean map.

Maps are raw: (N, H, W) float, values in [-1, 1] (drops of a probability).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.geometry import CLASS_NAMES

AMPLITUDE_EDGES = (0.01, 0.05, 0.2)
AMPLITUDE_BINS = ("<0.01", "0.01-0.05", "0.05-0.2", ">=0.2")
NON_TRIVIAL = 0.05  # amplitude from which a map counts as non-trivial
TOP_SHARE = 0.1  # the top-k IoU's k as a share of the map's pixels: 44 of 21x21
SSIM_MAX_VAL = 2.0  # the data range of raw maps in [-1, 1]
METHODS = ("estimate", "class_mean", "zero")
GOALS = {"median_r": 0.95, "mean_ssim": 0.9, "mse_skill": 0.8}


def amplitude(maps: np.ndarray) -> np.ndarray:
    """(N,) max |d| of each map (N, H, W)."""
    maps = np.asarray(maps)
    return np.abs(maps.reshape(len(maps), -1)).max(axis=1) if len(maps) else np.zeros(0)


def amplitude_bin(maps: np.ndarray) -> np.ndarray:
    """(N,) index into ``AMPLITUDE_BINS`` of each map's amplitude."""
    return np.searchsorted(np.asarray(AMPLITUDE_EDGES), amplitude(maps), side="right")


def is_constant(maps: np.ndarray) -> np.ndarray:
    """(N,) True where a map is constant (e.g. a saturated softmax: every drop 0), so that
    its Pearson r is undefined."""
    flat = np.asarray(maps).reshape(len(maps), -1)
    return flat.max(axis=1) == flat.min(axis=1)


def pearson_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Pearson correlation of each pair of maps; NaN where either map is constant."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / norm
    return np.where(norm > 0, np.clip(r, -1.0, 1.0), np.nan)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) SSIM of each pair of maps: ``tf.image.ssim`` with ``max_val`` 2 (raw maps in
    [-1, 1]), its default 11x11 Gaussian window."""
    import tensorflow as tf

    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if not len(a):
        return np.zeros(0)
    values = tf.image.ssim(tf.constant(a[..., None]), tf.constant(b[..., None]),
                           max_val=SSIM_MAX_VAL)
    return values.numpy().astype(np.float64)


def top_k_pixels(pixels: int, share: float = TOP_SHARE) -> int:
    """k of the top-k IoU on maps of ``pixels`` pixels: ``share`` of them, rounded, >= 1
    (44 of 441)."""
    return max(1, round(share * pixels))


def top_k_iou(a: np.ndarray, b: np.ndarray, k: int | None = None) -> np.ndarray:
    """(N,) intersection over union of the ``k`` highest pixels (most evidence for the
    target class) of each pair of maps (None: ``top_k_pixels`` of the maps' size); ties
    are broken by pixel order."""
    a = np.asarray(a).reshape(len(a), -1)
    b = np.asarray(b).reshape(len(b), -1)
    if k is None:
        k = top_k_pixels(a.shape[1])
    if not 0 < k <= a.shape[1]:
        raise ValueError(f"k must lie in [1, {a.shape[1]}], got {k}")
    top_a = np.zeros(a.shape, bool)
    top_b = np.zeros(b.shape, bool)
    rows = np.arange(len(a))[:, None]
    top_a[rows, np.argsort(-a, axis=1, kind="stable")[:, :k]] = True
    top_b[rows, np.argsort(-b, axis=1, kind="stable")[:, :k]] = True
    inter = (top_a & top_b).sum(axis=1)
    return inter / (2 * k - inter)


def per_map_scores(estimate: np.ndarray, exact: np.ndarray) -> dict[str, np.ndarray]:
    """{mse, mae, r, ssim, iou}: (N,) figures of each estimated map against its exact map."""
    estimate = np.asarray(estimate, np.float64)
    exact = np.asarray(exact, np.float64)
    if estimate.shape != exact.shape or estimate.ndim != 3:
        raise ValueError(f"estimate and exact must both be (N, H, W), got {estimate.shape} "
                         f"and {exact.shape}")
    error = (estimate - exact).reshape(len(exact), -1)
    return {"mse": (error ** 2).mean(axis=1), "mae": np.abs(error).mean(axis=1),
            "r": pearson_r(estimate, exact), "ssim": ssim(estimate, exact),
            "iou": top_k_iou(estimate, exact)}


def class_mean_maps(maps: np.ndarray, predicted: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """(K, H, W) mean map of each predicted class (zeros for a class with no stamp)."""
    maps = np.asarray(maps, np.float64)
    predicted = np.asarray(predicted)
    means = np.zeros((n_classes, *maps.shape[1:]))
    for c in range(n_classes):
        if (predicted == c).any():
            means[c] = maps[predicted == c].mean(axis=0)
    return means


def _summary(scores: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    """Means and medians of the per-map figures over ``mask`` (r over non-NaN only)."""
    out: dict = {"n": int(mask.sum())}
    for key, values in scores.items():
        picked = values[mask]
        picked = picked[~np.isnan(picked)]
        out[f"{key}_mean"] = float(picked.mean()) if len(picked) else None
        out[f"{key}_median"] = float(np.median(picked)) if len(picked) else None
    return out


def _group(all_scores: dict[str, dict], mask: np.ndarray, constant: np.ndarray) -> dict:
    group = {"n": int(mask.sum()), "n_constant": int((mask & constant).sum())}
    for method, scores in all_scores.items():
        group[method] = _summary(scores, mask)
    reference = all_scores["class_mean"]["mse"][mask].sum()
    group["mse_skill"] = (float(1.0 - all_scores["estimate"]["mse"][mask].sum() / reference)
                          if reference > 0 else None)
    return group


def fidelity_report(estimate: np.ndarray, exact: np.ndarray, true_class: np.ndarray,
                    predicted: np.ndarray, class_means: np.ndarray) -> dict:
    """Every fidelity figure of ``estimate`` against ``exact`` with its baselines.

    Parameters
    ----------
    estimate, exact : (N, H, W) raw maps.
    true_class, predicted : (N,) int labels (0 bogus, 1 real) and predicted classes.
    class_means : (K, H, W) from ``class_mean_maps`` on the TRAINING maps.

    Returns
    -------
    A dict with ``overall``, ``by_true_class``, ``by_predicted_class``, ``by_amplitude``
    and ``non_trivial`` (overall and per true class, amplitude >= 0.05, constant maps
    excluded) groups, each holding n, n_constant, the per-method summaries
    (``estimate``, ``class_mean``, ``zero``: ``mse_mean``, ``r_median``, ``ssim_mean``,
    ``iou_mean``, ...) and ``mse_skill`` = 1 - MSE(estimate) / MSE(class-mean map); and
    ``headline``: the figures the goals are set on, with a pass flag for each.
    """
    exact = np.asarray(exact)
    true_class = np.asarray(true_class)
    predicted = np.asarray(predicted)
    n = len(exact)
    if not (len(true_class) == len(predicted) == len(np.asarray(estimate)) == n):
        raise ValueError("estimate, exact, true_class and predicted must have the same length")
    baselines = {"class_mean": np.asarray(class_means)[predicted], "zero": np.zeros_like(exact)}
    all_scores = {"estimate": per_map_scores(estimate, exact)}
    all_scores.update({name: per_map_scores(maps, exact) for name, maps in baselines.items()})
    constant = is_constant(exact)
    amp = amplitude(exact)
    everything = np.ones(n, bool)
    non_trivial = (amp >= NON_TRIVIAL) & ~constant
    report = {
        "overall": _group(all_scores, everything, constant),
        "by_true_class": {name: _group(all_scores, true_class == c, constant)
                          for c, name in enumerate(CLASS_NAMES)},
        "by_predicted_class": {name: _group(all_scores, predicted == c, constant)
                               for c, name in enumerate(CLASS_NAMES)},
        "by_amplitude": {name: _group(all_scores, amplitude_bin(exact) == b, constant)
                         for b, name in enumerate(AMPLITUDE_BINS)},
        "non_trivial": {"overall": _group(all_scores, non_trivial, constant)}
                       | {name: _group(all_scores, non_trivial & (true_class == c), constant)
                          for c, name in enumerate(CLASS_NAMES)},
    }
    report["headline"] = headline(report)
    return report


def headline(report: dict) -> dict:
    """The goal figures of a ``fidelity_report``: per true class, median r and mean SSIM
    on the non-trivial maps, MSE skill on all maps of the class; and overall MSE skill."""
    out: dict = {"mse_skill_overall": report["overall"]["mse_skill"]}
    for name in CLASS_NAMES:
        group = report["non_trivial"][name]["estimate"]
        out[f"{name}_median_r"] = group["r_median"]
        out[f"{name}_mean_ssim"] = group["ssim_mean"]
        out[f"{name}_mse_skill"] = report["by_true_class"][name]["mse_skill"]
    checks = {key: value is not None and value >= GOALS[goal]
              for key, value in out.items()
              for goal in GOALS if key.endswith(goal)}
    out["meets_goals"] = bool(checks) and all(checks.values())
    out["goals"] = dict(GOALS)
    return out

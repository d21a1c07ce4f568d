"""Every figure the project draws. Functions return matplotlib Figures; callers save them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on build machines; figures are files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.core.geometry import CLASS_NAMES, StampGeometry  # noqa: E402


def confusion_matrix_figure(confusion: dict, title: str = "Confusion matrix") -> plt.Figure:
    """A 2x2 heat map from counts {"tn", "fp", "fn", "tp"} (rows: true, columns: predicted)."""
    counts = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=120)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, f"{count}\n{shares[i, j]:.1%}", ha="center", va="center",
                color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves_figure(history: dict[str, list[float]], title: str = "") -> plt.Figure:
    """Loss and accuracy per epoch, train beside validation; a note when there are no
    epochs (an imported classifier, not trained here)."""
    if not history.get("loss"):
        fig, ax = plt.subplots(figsize=(8, 3.2), dpi=120)
        ax.axis("off")
        ax.text(0.5, 0.5, "no training curves: the classifier was imported, not trained here",
                ha="center", va="center")
        if title:
            fig.suptitle(title)
        return fig
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=120)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# Short panel titles of channel names that do not fit above a stamp.
SHORT_NAMES = {"snr_difference": "SNR diff."}


def channel_titles(stamps: np.ndarray, channels=None) -> list[str]:
    """Panel titles of the channels of ``stamps`` (N, H, W, C): ``channels`` (names), or
    the geometry's default names for C channels, shortened where long."""
    names = StampGeometry.from_stamps(stamps, channels).channels
    return [SHORT_NAMES.get(name, name) for name in names]


# The colour bar's words: a map is the drop of the explained class's probability.
SIGN_LEGEND = ("red: hiding the patch lowers p(explained class), evidence for it; "
               "blue: hiding it raises p")


def shared_scale(*maps: np.ndarray) -> float:
    """One symmetric colour scale for a figure: the largest |value| of all ``maps``
    (each (N, H, W) or (H, W)), at least 1e-6."""
    return max([1e-6, *(float(np.abs(m).max()) for m in maps if np.size(m))])


def map_gallery_figure(stamps: np.ndarray, exact: np.ndarray, estimate: np.ndarray,
                       captions: list[str], title: str = "", channels=None,
                       scale: float | None = None) -> plt.Figure:
    """One row per stamp: its channels (grey, [0, 1]), the exact map, the estimated map
    and their difference, every map of the figure on ONE symmetric colour scale (so a
    weak map looks weak), with its colour bar and sign legend below; each row's own
    amplitude (max |exact|) written at its right.

    stamps (N, H, W, C) in [0, 1], ``channels`` their C names (None: the default names);
    exact, estimate (N, H, W) raw maps in [-1, 1]; captions N strings shown at the row's
    left; ``scale`` the colour scale's half range (None: ``shared_scale`` of the maps).
    """
    n, count = len(stamps), stamps.shape[-1]
    scale = shared_scale(exact, estimate) if scale is None else scale
    fig, axes = plt.subplots(n, count + 3, figsize=(1.5 * (count + 3) + 1.2, 1.6 * n + 1.3),
                             dpi=100, squeeze=False)  # 1.2 inches for the amplitudes
    headers = [*channel_titles(stamps, channels), "exact map", "estimate", "estimate - exact"]
    shown = None
    for row in range(n):
        panels = [(stamps[row, ..., c], "gray", 0.0, 1.0) for c in range(count)]
        panels += [(m, "RdBu_r", -scale, scale)
                   for m in (exact[row], estimate[row], estimate[row] - exact[row])]
        for col, (image, cmap, low, high) in enumerate(panels):
            ax = axes[row, col]
            drawn = ax.imshow(image, cmap=cmap, vmin=low, vmax=high)
            if col == count:
                shown = drawn
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(headers[col], fontsize=8)
        axes[row, 0].set_ylabel(captions[row], fontsize=7)
        axes[row, -1].text(1.08, 0.5, f"max |exact|\n{np.abs(exact[row]).max():.3f}",
                           transform=axes[row, -1].transAxes, fontsize=7, va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    height = 1.6 * n + 1.3  # inches: the colour bar's 0.9 below, the title's 0.35 above
    fig.tight_layout(rect=(0, 0.9 / height, 1, 1 - (0.35 if title else 0.0) / height))
    bar_axes = fig.add_axes((0.3, 0.35 / height, 0.4, 0.12 / height))
    bar = fig.colorbar(shown, cax=bar_axes, orientation="horizontal")
    bar.ax.tick_params(labelsize=7)
    bar.set_label(f"drop of p, one scale for the figure (±{scale:.3f}); {SIGN_LEGEND}",
                  fontsize=7)
    return fig


def gallery_caption(index: int, true_class: int, predicted: int, probability: float,
                    r: float, mark: str = "", kind: str | None = None) -> str:
    """A gallery row's caption: the row's mark (worst / random), the stamp's index, true
    and predicted class with the predicted class's probability, its kind when known, r."""
    fit = "r n/a (flat map)" if np.isnan(r) else f"r={r:.2f}"
    first = f"{mark} #{index}" if mark else f"#{index}"
    kind_text = f"{kind}, " if kind else ""
    return (f"{first}\n{CLASS_NAMES[true_class]} / {CLASS_NAMES[predicted]} "
            f"({probability:.2f})\n{kind_text}{fit}")


def worst_and_random_gallery(stamps: np.ndarray, labels: np.ndarray, exact: np.ndarray,
                             estimate: np.ndarray, title: str, predicted: np.ndarray,
                             probability: np.ndarray, rows: int = 12, seed: int = 0,
                             channels=None, kinds: np.ndarray | None = None,
                             classes: tuple[int, ...] = (1, 0)) -> plt.Figure:
    """``map_gallery_figure`` of ``rows`` stamps, shared equally by ``classes`` (true
    class; default real then bogus): in each, the worst non-trivial maps (lowest Pearson
    r; a quarter of the rows of two classes) marked "worst", then a seeded random few
    marked "random". Captions "true / predicted (p)", the kind when ``kinds`` (N,) is
    given, and r. ``predicted`` (N,) the explained class, ``probability`` (N,) its
    probability."""
    from pipeline.core import fidelity

    scores = fidelity.pearson_r(estimate, exact)
    non_trivial = fidelity.amplitude(exact) >= fidelity.NON_TRIVIAL
    rng = np.random.default_rng(seed)
    picked: list[tuple[int, str]] = []
    per_class = rows // len(classes)
    for label in classes:
        pool = np.flatnonzero((labels == label) & non_trivial & ~np.isnan(scores))
        worst = pool[np.argsort(scores[pool])[:max(per_class // 2, 1)]]
        rest = np.setdiff1d(np.flatnonzero(labels == label), worst)
        chosen = rng.choice(rest, size=min(per_class - len(worst), len(rest)), replace=False)
        picked += [(int(i), "worst") for i in worst] + [(int(i), "random") for i in chosen]
    index = [i for i, _ in picked]
    captions = [gallery_caption(i, labels[i], predicted[i], probability[i], scores[i], mark,
                                None if kinds is None else str(kinds[i]))
                for i, mark in picked]
    return map_gallery_figure(stamps[index], exact[index], estimate[index], captions, title,
                              channels)


def kinds_gallery(stamps: np.ndarray, labels: np.ndarray, exact: np.ndarray,
                  estimate: np.ndarray, kinds: np.ndarray, predicted: np.ndarray,
                  probability: np.ndarray, title: str, per_kind: int = 2, seed: int = 0,
                  channels=None) -> plt.Figure:
    """``map_gallery_figure`` with ``per_kind`` seeded random stamps of every kind of stamp
    in ``kinds`` (N,) str (the twin's: real, trail, cosmic_ray, ccd_defect, ...),
    non-trivial maps first where a kind has enough of them."""
    from pipeline.core import fidelity

    scores = fidelity.pearson_r(estimate, exact)
    non_trivial = fidelity.amplitude(exact) >= fidelity.NON_TRIVIAL
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for kind in np.unique(kinds):
        strong = rng.permutation(np.flatnonzero((kinds == kind) & non_trivial))
        weak = rng.permutation(np.flatnonzero((kinds == kind) & ~non_trivial))
        picked += np.concatenate([strong, weak])[:per_kind].astype(int).tolist()
    captions = [gallery_caption(i, labels[i], predicted[i], probability[i], scores[i],
                                kind=str(kinds[i])) for i in picked]
    return map_gallery_figure(stamps[picked], exact[picked], estimate[picked], captions, title,
                              channels)


def deletion_curves_figure(fractions: np.ndarray, curves: dict[str, np.ndarray],
                           aucs: dict[str, float] | None = None, n: int | None = None,
                           title: str = "Deletion curves (test split)") -> plt.Figure:
    """Mean probability of the explained class against the fraction of pixels removed,
    one line and colour per map method, its mean AUC (``aucs``) in the legend and the
    number of stamps ``n`` in the title (a faster fall, a lower AUC, means a more
    faithful ranking)."""
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for name, curve in curves.items():
        label = name if not aucs or name not in aucs else f"{name} (AUC {aucs[name]:.3f})"
        ax.plot(fractions, curve, label=label)
    ax.set_xlabel("fraction of pixels removed (most important first)")
    ax.set_ylabel("probability of the explained class")
    ax.set_ylim(0, 1.02)
    ax.set_title(title if n is None else f"{title}, n = {n}", fontsize=10)
    ax.legend(fontsize=8, title="mean AUC: lower is more faithful" if aucs else None,
              title_fontsize=7)
    fig.tight_layout()
    return fig


def selective_figure(curves: dict[str, list[dict]], operating_share: float,
                     title: str = "Selective explanation (test split)") -> plt.Figure:
    """Fidelity of the delivered maps (estimated, or exact where recomputed) against the
    share recomputed exactly, one line per order of recomputation (``curves``:
    ``selective.selective_curves``, {policy: [{"share", "p0_1_r", "bad_share", ...}]}):
    left, the 0.1th percentile of r over the non-trivial maps; right, the share of bad
    maps (r < 0.9; log scale, 0 drawn at the axis floor). ``operating_share``: a dashed
    line."""
    fig, (low, bad) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    floor = None
    for name, points in curves.items():
        shares = np.array([p["share"] for p in points]) * 100
        low.plot(shares, [np.nan if p["p0_1_r"] is None else p["p0_1_r"] for p in points],
                 marker=".", label=name)
        values = np.array([np.nan if p["bad_share"] is None else p["bad_share"]
                           for p in points], float)
        positive = values[values > 0]
        if len(positive):
            floor = min(floor or 1.0, positive.min() / 3)
        bad.plot(shares, values, marker=".", label=name)
    floor = floor or 1e-5
    for line in bad.get_lines():
        line.set_ydata(np.maximum(np.asarray(line.get_ydata(), float), floor))
    bad.set_yscale("log")
    bad.set_ylim(floor * 0.8, None)
    for ax in (low, bad):
        ax.axvline(operating_share * 100, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, 100)
        ax.set_xlabel("maps recomputed exactly (%)")
        ax.legend(fontsize=8)
    low.set_ylabel("0.1th percentile of r (non-trivial maps)")
    bad.set_ylabel("share of bad maps (r < 0.9)")
    bad.text(0.98, 0.02, "bottom of the axis: no bad map left", transform=bad.transAxes,
             ha="right", va="bottom", fontsize=7, color="grey")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def message_figure(text: str) -> plt.Figure:
    """A small figure that only says ``text``: stands in for a plot that cannot be drawn
    (e.g. the selective curves of an estimator without a doubt head)."""
    fig = plt.figure(figsize=(5, 1), dpi=100)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    return fig


def stamp_panel_figure(stamp: np.ndarray, occlusion_map: np.ndarray, caption: str = "",
                       channels=None) -> plt.Figure:
    """One stamp's channels (grey, [0, 1]) beside its map (symmetric colour scale).

    stamp (H, W, C) in [0, 1], ``channels`` its C names (None: the default names);
    occlusion_map (H, W) raw map in [-1, 1].
    """
    count = stamp.shape[-1]
    titles = channel_titles(stamp[None], channels)
    fig, axes = plt.subplots(1, count + 1, figsize=(1.7 * (count + 1), 2.0), dpi=100)
    scale = max(float(np.abs(occlusion_map).max()), 1e-6)
    for col, ax in enumerate(axes):
        if col < count:
            ax.imshow(stamp[..., col], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(titles[col], fontsize=8)
        else:
            shown = ax.imshow(occlusion_map, cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_title("occlusion map", fontsize=8)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    if caption:
        fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def pareto_figure(points: list[tuple[float, float]], front: list[int], chosen: int,
                  fidelity_name: str, floor: float, labels: list[int]) -> plt.Figure:
    """Trials as (fidelity, maps/s) points, the Pareto front joined, the fidelity floor and
    the chosen trial marked; ``labels`` are the trials' numbers."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    xs = np.array([p[0] for p in points], float)
    ys = np.array([p[1] for p in points], float)
    ax.scatter(xs, ys, s=18, color="0.6", label="trials")
    if front:
        ax.plot(xs[front], ys[front], "o-", color="tab:blue", label="Pareto front")
    ax.scatter([xs[chosen]], [ys[chosen]], s=120, facecolors="none", edgecolors="tab:red",
               linewidths=2, label=f"chosen (trial {labels[chosen]})")
    ax.axvline(floor, color="tab:red", linestyle="--", linewidth=1,
               label=f"fidelity floor {floor:g}")
    for x, y, label in zip(xs, ys, labels, strict=True):
        ax.annotate(str(label), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"validation {fidelity_name} (higher is better)")
    ax.set_ylabel("explainer maps/s (higher is better)")
    ax.set_title("Estimator search: fidelity vs speed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

"""The figures an astronomer reads: one colour scale per gallery, marked rows, captions."""

from __future__ import annotations

import numpy as np

from pipeline.core import plots


def _maps(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    exact = rng.normal(size=(n, 21, 21)).astype(np.float32)
    exact *= np.linspace(0.01, 0.6, n)[:, None, None] / np.abs(exact).max(axis=(1, 2),
                                                                            keepdims=True)
    return rng.random((n, 21, 21, 4)).astype(np.float32), exact


def test_shared_scale_is_the_largest_value_of_all_maps():
    a = np.zeros((2, 3, 3))
    b = np.zeros((3, 3))
    a[1, 2, 2], b[0, 0] = -0.4, 0.25
    assert plots.shared_scale(a, b) == 0.4
    assert plots.shared_scale(np.zeros((1, 3, 3))) == 1e-6


def test_gallery_draws_every_map_on_one_scale_with_a_colour_bar():
    stamps, exact = _maps(3)
    estimate = exact * 0.9
    figure = plots.map_gallery_figure(stamps, exact, estimate, ["a", "b", "c"])
    map_limits = {image.get_clim() for ax in figure.axes for image in ax.get_images()
                  if image.get_cmap().name == "RdBu_r"}
    # 3 rows x (exact, estimate, difference), all on +-0.6: the strongest map's amplitude
    assert len(map_limits) == 1
    low, high = map_limits.pop()
    assert high == -low == np.float32(np.abs(exact).max())
    bar = [ax for ax in figure.axes if "one scale for the figure" in ax.get_xlabel()]
    assert len(bar) == 1 and "evidence for it" in bar[0].get_xlabel()
    # each row's own amplitude is written beside it
    written = [text.get_text() for ax in figure.axes for text in ax.texts]
    assert f"max |exact|\n{np.abs(exact[0]).max():.3f}" in written


def test_worst_and_random_rows_are_marked_and_captioned_with_the_prediction():
    stamps, exact = _maps(40, seed=1)
    labels = np.array([0, 1] * 20)
    estimate = exact.copy()
    estimate[7] = -exact[7]  # a real stamp (label 1) with an inverted estimate: r = -1
    predicted = np.ones(40, int)
    probability = np.full(40, 0.75)
    figure = plots.worst_and_random_gallery(stamps, labels, exact, estimate, "t", predicted,
                                            probability, rows=8, classes=(1,))
    captions = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
    assert len(captions) == 8
    assert captions[0] == "worst #7\nreal / real (0.75)\nr=-1.00"
    assert sum(c.startswith("worst") for c in captions) == 4
    assert sum(c.startswith("random") for c in captions) == 4


def test_caption_of_a_flat_map_says_so_and_names_the_kind():
    assert plots.gallery_caption(3, 0, 1, 0.62, float("nan"), kind="trail") == (
        "#3\nbogus / real (0.62)\ntrail, r n/a (flat map)")


def test_kinds_gallery_shows_each_kind():
    stamps, exact = _maps(12, seed=2)
    kinds = np.array(["trail", "real", "cosmic_ray"] * 4)
    labels = (kinds == "real").astype(int)
    figure = plots.kinds_gallery(stamps, labels, exact, exact, kinds, labels,
                                 np.full(12, 0.9), "kinds", per_kind=2)
    captions = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
    assert [c.split("\n")[2].split(",")[0] for c in captions] == [
        "cosmic_ray", "cosmic_ray", "real", "real", "trail", "trail"]


def test_deletion_legend_gives_the_aucs_and_the_title_n():
    fractions = np.linspace(0, 1, 5)
    curves = {"exact": np.linspace(1, 0, 5), "random": np.linspace(1, 0.8, 5)}
    figure = plots.deletion_curves_figure(fractions, curves, {"exact": 0.25, "random": 0.9},
                                          n=1000)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "exact (AUC 0.250)", "random (AUC 0.900)"]
    assert ax.get_title().endswith("n = 1000")
    colours = {line.get_color() for line in ax.get_lines()}
    assert len(colours) == 2

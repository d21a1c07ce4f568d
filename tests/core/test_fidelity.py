"""Fidelity figures against values worked out by hand on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import fidelity


def _maps(n=6, seed=0):
    return np.random.default_rng(seed).normal(0, 0.1, (n, 21, 21)).astype(np.float32)


def test_identical_maps_score_perfectly_and_negation_scores_minus_one():
    maps = _maps()
    scores = fidelity.per_map_scores(maps, maps)
    np.testing.assert_allclose(scores["r"], 1.0, atol=1e-12)
    np.testing.assert_allclose(scores["ssim"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(scores["iou"], 1.0)
    np.testing.assert_array_equal(scores["mse"], 0.0)
    np.testing.assert_allclose(fidelity.pearson_r(maps, -maps), -1.0, atol=1e-12)


def test_pearson_r_of_an_affine_copy_is_one_and_of_a_constant_map_is_nan():
    maps = _maps(2)
    np.testing.assert_allclose(fidelity.pearson_r(maps, 3 * maps + 0.5), 1.0, atol=1e-12)
    constant = np.full((1, 21, 21), 0.2)
    assert np.isnan(fidelity.pearson_r(constant, maps[:1]))[0]


def test_mse_and_mae_by_hand():
    exact = np.zeros((1, 21, 21))
    estimate = np.zeros((1, 21, 21))
    estimate[0, 0, :2] = [0.3, -0.1]
    scores = fidelity.per_map_scores(estimate, exact)
    assert scores["mse"][0] == pytest.approx((0.09 + 0.01) / 441)
    assert scores["mae"][0] == pytest.approx(0.4 / 441)


def test_top_k_iou_by_hand():
    a = np.zeros((1, 21, 21))
    b = np.zeros((1, 21, 21))
    a[0, 0, :3] = [3, 2, 1]  # top 2 of a: pixels 0, 1
    b[0, 0, 1:4] = [3, 2, 1]  # top 2 of b: pixels 1, 2
    assert fidelity.top_k_iou(a, b, k=2)[0] == pytest.approx(1 / 3)
    assert fidelity.top_k_iou(a, b, k=1)[0] == 0.0
    with pytest.raises(ValueError, match="k must lie"):
        fidelity.top_k_iou(a, b, k=0)


def test_amplitude_bins_and_constant_maps():
    maps = np.zeros((6, 21, 21))
    for i, peak in enumerate([0.005, 0.01, 0.03, 0.05, 0.1, -0.5]):
        maps[i, 10, 10] = peak
    np.testing.assert_allclose(fidelity.amplitude(maps), [0.005, 0.01, 0.03, 0.05, 0.1, 0.5])
    np.testing.assert_array_equal(fidelity.amplitude_bin(maps), [0, 1, 1, 2, 2, 3])
    flat = np.full((2, 21, 21), 0.3)
    flat[1, 0, 0] = 0.0
    np.testing.assert_array_equal(fidelity.is_constant(flat), [True, False])


def test_class_mean_maps_by_hand():
    maps = np.zeros((3, 21, 21))
    maps[0, 0, 0], maps[1, 0, 0], maps[2, 0, 0] = 1.0, 3.0, 5.0
    means = fidelity.class_mean_maps(maps, np.array([1, 1, 0]))
    assert means[1, 0, 0] == 2.0 and means[0, 0, 0] == 5.0
    assert np.count_nonzero(means) == 2
    assert not fidelity.class_mean_maps(maps, np.array([1, 1, 1]))[0].any()


def test_report_skill_by_hand_and_perfect_estimate():
    # two real stamps (predicted real) whose exact maps have one bright pixel each;
    # the class-mean map (from "training") is 0.1 at both pixels.
    exact = np.zeros((2, 21, 21))
    exact[0, 5, 5] = 0.4
    exact[1, 6, 6] = 0.2
    class_means = np.zeros((2, 21, 21))
    class_means[1, 5, 5] = class_means[1, 6, 6] = 0.1
    estimate = exact.copy()
    estimate[0, 5, 5] = 0.3  # error 0.1 on one pixel
    labels = np.array([1, 1])
    report = fidelity.fidelity_report(estimate, exact, labels, labels, class_means)
    mse_estimate = 0.1 ** 2 / 441 / 2  # mean over the two maps
    mse_baseline = ((0.3 ** 2 + 0.1 ** 2) + (0.1 ** 2 + 0.1 ** 2)) / 441 / 2
    group = report["by_true_class"]["real"]
    assert group["estimate"]["mse_mean"] == pytest.approx(mse_estimate)
    assert group["class_mean"]["mse_mean"] == pytest.approx(mse_baseline)
    assert group["mse_skill"] == pytest.approx(1 - mse_estimate / mse_baseline)
    assert report["by_true_class"]["bogus"]["n"] == 0
    assert report["by_amplitude"][">=0.2"]["n"] == 2
    assert report["non_trivial"]["real"]["n"] == 2
    assert report["overall"]["zero"]["mse_mean"] == pytest.approx((0.16 + 0.04) / 441 / 2)

    perfect = fidelity.fidelity_report(exact, exact, labels, labels, class_means)
    assert perfect["overall"]["mse_skill"] == 1.0
    assert perfect["headline"]["real_median_r"] == pytest.approx(1.0)
    assert perfect["headline"]["real_mean_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert not perfect["headline"]["meets_goals"]  # no bogus map: its figures are missing


def test_report_counts_constant_maps_apart_from_the_non_trivial_ones():
    exact = _maps(4) * 5
    exact[0] = 0.0  # a saturated softmax: every drop 0
    labels = np.array([0, 0, 1, 1])
    means = fidelity.class_mean_maps(exact, labels)
    report = fidelity.fidelity_report(exact, exact, labels, labels, means)
    assert report["by_true_class"]["bogus"]["n_constant"] == 1
    assert report["non_trivial"]["bogus"]["n"] == 1
    assert report["headline"]["meets_goals"]
    with pytest.raises(ValueError, match="same length"):
        fidelity.fidelity_report(exact[:3], exact, labels, labels, means)

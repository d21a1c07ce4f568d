"""Deletion curves, localisation and rank correlation against hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import faithfulness

WEIGHTS = np.array([[0.4, 0.3], [0.2, 0.1]])


def linear_model(stamps):
    """P(real) = sum of weight x pixel (weights sum to 1, so ones -> 1)."""
    real = (np.asarray(stamps)[..., 0] * WEIGHTS).sum(axis=(1, 2))
    return np.stack([1 - real, real], axis=1)


def test_deletion_curve_of_a_linear_model_by_hand():
    stamps = np.ones((2, 2, 2, 1), np.float32)
    maps = np.stack([WEIGHTS, WEIGHTS[::-1, ::-1]])  # right order, reversed order
    curves = faithfulness.deletion_curves(linear_model, stamps, maps, np.array([1, 1]),
                                          steps=4, batch_size=3)
    np.testing.assert_allclose(curves[0], [1.0, 0.6, 0.3, 0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(curves[1], [1.0, 0.9, 0.7, 0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(faithfulness.curve_auc(curves), [0.375, 0.625], atol=1e-6)


def test_deletion_fills_with_the_fill_value_and_tracks_the_target_class():
    stamps = np.zeros((1, 2, 2, 1), np.float32)
    curves = faithfulness.deletion_curves(linear_model, stamps, WEIGHTS[None], np.array([0]),
                                          steps=2, fill=1.0)
    # removing the top half (0.4, 0.3) with fill 1 moves P(real) to 0.7: P(bogus) 0.3
    np.testing.assert_allclose(curves[0], [1.0, 0.3, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="maps must be"):
        faithfulness.deletion_curves(linear_model, stamps, WEIGHTS, np.array([0]))


def test_pointing_game_and_positive_mass_on_a_hand_made_mask():
    maps = np.zeros((3, 3, 3))
    maps[0, 1, 1] = 1.0  # maximum at the centre
    maps[1, 0, 0] = 1.0  # maximum in a corner
    maps[0, 0, 0], maps[0, 2, 2] = 0.5, -2.0
    masks = np.zeros((3, 3, 3), bool)
    masks[:2, 1, 1] = True  # centre pixel only; stamp 2 has no evidence recorded
    np.testing.assert_array_equal(faithfulness.pointing_game(maps, masks)[:2], [1.0, 0.0])
    assert np.isnan(faithfulness.pointing_game(maps, masks)[2])
    mass = faithfulness.positive_mass_in_mask(maps, masks)
    assert mass[0] == pytest.approx(1.0 / 1.5) and mass[1] == 0.0 and np.isnan(mass[2])


def test_rank_correlation_ignores_monotone_transforms():
    maps = np.random.default_rng(0).normal(size=(3, 21, 21))
    np.testing.assert_allclose(faithfulness.rank_correlation(maps, np.exp(maps)), 1.0)
    np.testing.assert_allclose(faithfulness.rank_correlation(maps, -maps ** 3), -1.0)
    assert np.isnan(faithfulness.rank_correlation(np.zeros((1, 21, 21)), maps[:1]))[0]


def test_random_maps_are_seeded():
    np.testing.assert_array_equal(faithfulness.random_maps(2, 21, 21, seed=3),
                                  faithfulness.random_maps(2, 21, 21, seed=3))
    assert faithfulness.random_maps(2, 31, 15).shape == (2, 31, 15)
    assert faithfulness.deletion_order(np.array([[[0.1, 0.3], [0.3, 0.2]]])).tolist() == [
        [1, 2, 3, 0]]

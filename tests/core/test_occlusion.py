"""The exact occlusion engine against a naive loop, closed forms, and batching changes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import naive_maps
from pipeline.core.models.classifiers import build_classifier, quarter_turn_invariant
from pipeline.core.occlusion import (
    keras_predict_fn,
    n_positions,
    occlusion_maps,
    patch_masks,
    quarter_turn_symmetric,
    quarter_turns,
)


@pytest.fixture(scope="module")
def small_cnn():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((9, 9, 2)),
        keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    # larger weights so occlusion moves the probabilities well above float noise
    model.set_weights([w * 3 for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def small_stamps():
    return np.random.default_rng(0).random((3, 9, 9, 2)).astype(np.float32)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("patch", [1, 3])
def test_matches_a_naive_loop(small_cnn, small_stamps, padding, reduce, stride, patch):
    predict = keras_predict_fn(small_cnn)
    maps, target, base_prob = occlusion_maps(predict, small_stamps, patch=patch, stride=stride,
                                             fill=0.1, padding=padding, reduce=reduce,
                                             chunk_size=2)
    expected = naive_maps(lambda x: predict(tf.constant(x, tf.float32)).numpy(), small_stamps,
                           patch, stride, 0.1, padding, reduce)
    # Each drop carries the float32 rounding of a batched classifier call (~1e-7 on p <= 1,
    # and CPU kernels round differently by batch size); a summed map adds up to patch**2.
    tolerance = 1e-6 * (patch ** 2 if reduce == "sum" else 1)
    assert np.abs(maps - expected).max() <= tolerance
    assert np.abs(expected).max() > 1e-3  # the comparison is not between near-zero maps
    probabilities = small_cnn(small_stamps).numpy()
    np.testing.assert_array_equal(target, probabilities.argmax(axis=1))
    np.testing.assert_allclose(base_prob, probabilities.max(axis=1), atol=1e-6)


def _linear_predict(weights):
    """p(class 1) = 0.5 + sum(weights * x), p(class 0) = 1 - p(class 1)."""
    w = tf.constant(weights, tf.float32)

    def predict(x):
        p1 = 0.5 + tf.reduce_sum(tf.cast(x, tf.float32) * w, axis=[1, 2, 3])
        return tf.stack([1.0 - p1, p1], axis=1)

    return predict


def test_closed_form_single_pixel_weight():
    # Only pixel (5, 6) of channel 0 counts, with weight 0.1; x there is 0.8, fill 0.
    # A 3x3 'same' patch centred within 1 px of it hides it and drops p1 by 0.08. An
    # interior pixel q is covered by 9 patches, of which (3-|dy|)(3-|dx|) also cover
    # (5, 6): mean map = 0.08 (3-|dy|)(3-|dx|) / 9 for |dy|, |dx| <= 2, else 0.
    weights = np.zeros((11, 11, 2), np.float32)
    weights[5, 6, 0] = 0.1
    stamp = np.full((1, 11, 11, 2), 0.3, np.float32)
    stamp[0, 5, 6, 0] = 0.8
    maps, target, base_prob = occlusion_maps(_linear_predict(weights), stamp, target=np.array([1]))
    expected = np.zeros((11, 11))
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            expected[5 + dy, 6 + dx] = 0.08 * (3 - abs(dy)) * (3 - abs(dx)) / 9
    np.testing.assert_allclose(maps[0], expected, atol=1e-6)
    assert target[0] == 1 and base_prob[0] == pytest.approx(0.5 + 0.08)


def test_closed_form_sum_model_with_border_clipping():
    # p1 = 0.5 + a * sum(x) on a constant stamp x = 0.5 with C = 2 channels, fill 0:
    # hiding a patch of A pixels drops p1 by a * 0.5 * 2 * A. Patches centred on a border
    # are clipped (A = 6 on an edge, 4 in a corner, 9 inside).
    a = 0.001
    weights = np.full((7, 7, 2), a, np.float32)
    stamp = np.full((1, 7, 7, 2), 0.5, np.float32)
    area = np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            area[i, j] = (min(i + 1, 6) - max(i - 1, 0) + 1) * (min(j + 1, 6) - max(j - 1, 0) + 1)
    drop_at_centre = a * 0.5 * 2 * area  # drop of the patch centred on (i, j)
    summed, _, _ = occlusion_maps(_linear_predict(weights), stamp, reduce="sum",
                                  target=np.array([1]))
    expected_sum = np.zeros((7, 7))
    counts = np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            expected_sum[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2] += drop_at_centre[i, j]
            counts[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2] += 1
    np.testing.assert_allclose(summed[0], expected_sum, atol=1e-6)
    assert summed[0, 3, 3] == pytest.approx(9 * a * 0.5 * 2 * 9, abs=1e-6)  # 9 full patches
    meaned, _, _ = occlusion_maps(_linear_predict(weights), stamp, target=np.array([1]))
    np.testing.assert_allclose(meaned[0], expected_sum / counts, atol=1e-6)
    assert meaned[0, 3, 3] == pytest.approx(a * 0.5 * 2 * 9, abs=1e-6)


def test_chunk_size_does_not_change_the_maps(small_cnn):
    stamps = np.random.default_rng(1).random((20, 9, 9, 2)).astype(np.float32)
    predict = keras_predict_fn(small_cnn)
    results = [occlusion_maps(predict, stamps, chunk_size=c)[0] for c in (1, 7, 64)]
    for other in results[1:]:
        # equal up to float32 rounding: CPU kernels round differently by batch size
        # (a few units of 1.2e-7, the spacing of floats just below p = 1)
        np.testing.assert_allclose(other, results[0], atol=5e-7, rtol=0)


def test_given_target_is_explained():
    weights = np.full((5, 5, 1), 0.01, np.float32)
    stamp = np.full((2, 5, 5, 1), 0.5, np.float32)
    as_real, target_real, _ = occlusion_maps(_linear_predict(weights), stamp,
                                             target=np.array([1, 1]))
    as_bogus, target_bogus, base = occlusion_maps(_linear_predict(weights), stamp,
                                                  target=np.array([0, 0]))
    np.testing.assert_allclose(as_bogus, -as_real, atol=1e-7)
    assert list(target_bogus) == [0, 0] and base[0] == pytest.approx(0.5 - 0.125)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 441),
        ({"padding": "valid"}, 361),
        ({"stride": 2}, 121),
        ({"padding": "valid", "stride": 2}, 100),
        ({"patch": 1, "padding": "valid"}, 441),
        ({"patch": 21, "padding": "valid"}, 1),
    ],
)
def test_position_counts(kwargs, expected):
    assert n_positions(21, 21, **kwargs) == expected
    assert len(patch_masks(21, 21, **kwargs)) == expected


def test_same_masks_are_clipped_at_borders():
    masks = patch_masks(21, 21)
    assert masks[0].sum() == 4  # corner patch, centred on (0, 0)
    assert masks[10].sum() == 6  # top edge
    assert masks[220].sum() == 9  # centre (10, 10)
    np.testing.assert_array_equal(np.flatnonzero(masks[220].any(axis=1)), [9, 10, 11])


def test_bad_settings_raise_clear_errors():
    model = build_classifier("seed", (3,))
    predict = keras_predict_fn(model)
    stamps = np.random.default_rng(0).random((2, 21, 21, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="patch 22 is larger than the 21x21 stamp"):
        occlusion_maps(predict, stamps, patch=22)
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        occlusion_maps(predict, stamps, stride=0)
    with pytest.raises(ValueError, match="rejected stamps of shape"):
        occlusion_maps(predict, stamps[..., :3])
    with pytest.raises(ValueError, match="shape \\(N, H, W, C\\)"):
        occlusion_maps(predict, stamps[0])
    nan = stamps.copy()
    nan[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values \\(first in stamp 1\\)"):
        occlusion_maps(predict, nan)
    with pytest.raises(ValueError, match="padding must be one of"):
        occlusion_maps(predict, stamps, padding="full")
    with pytest.raises(ValueError, match="reduce must be one of"):
        occlusion_maps(predict, stamps, reduce="max")
    with pytest.raises(ValueError, match="target classes must lie in"):
        occlusion_maps(predict, stamps, target=np.array([0, 2]))


def test_occluding_only_the_seen_channels_gives_the_same_maps():
    from pipeline.core.models.classifiers import seen_channels_predict_fn

    keras.utils.set_random_seed(5)
    stamps = np.random.default_rng(2).random((4, 21, 21, 4)).astype(np.float32)
    for arch, channels in (("seed", (3,)), ("deephits", (0, 2))):
        model = build_classifier(arch, channels)
        predict, seen = seen_channels_predict_fn(model)
        assert seen == channels
        full = occlusion_maps(keras_predict_fn(model), stamps)
        selected = occlusion_maps(predict, stamps, channels=seen)
        for a, b in zip(full, selected, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_seen_channels_of_a_plain_model_are_all(small_cnn):
    from pipeline.core.models.classifiers import seen_channels_predict_fn

    _, channels = seen_channels_predict_fn(small_cnn)
    assert channels is None


@pytest.mark.parametrize("kwargs, expected", [
    ({"padding": "same", "stride": 1}, True),
    ({"padding": "valid", "stride": 1}, True),
    ({"padding": "same", "stride": 2}, True),   # centres 0, 2, ..., 20: symmetric
    ({"padding": "same", "stride": 3}, False),  # centres 0, 3, ..., 18: row 20 uncovered
    ({"padding": "valid", "stride": 4}, False),  # corners 0, 4, ..., 16: cover rows 0-18
])
def test_quarter_turn_symmetry_of_the_patch_grid(kwargs, expected):
    assert quarter_turn_symmetric(21, 21, patch=3, **kwargs) is expected
    assert quarter_turn_symmetric(21, 20, patch=3, **kwargs) is False


def test_turned_stamps_of_a_turn_invariant_net_have_the_turned_exact_maps():
    # deephits averages its four rotations, so its output ignores quarter turns; the
    # symmetric patch grid then makes the exact map of a turned stamp the turned map.
    keras.utils.set_random_seed(5)
    deep = build_classifier("deephits", (0, 1, 2, 3))
    stamps = np.random.default_rng(6).random((2, 21, 21, 4)).astype(np.float32)
    assert quarter_turn_invariant(deep, stamps)
    maps = occlusion_maps(keras_predict_fn(deep), stamps, chunk_size=2)[0]
    turned_stamps, turned_maps = quarter_turns(stamps, maps)
    assert turned_stamps.shape == (8, 21, 21, 4) and turned_maps.shape == (8, 21, 21)
    np.testing.assert_array_equal(turned_stamps[2:4], np.rot90(stamps, 1, axes=(1, 2)))
    np.testing.assert_array_equal(turned_maps[6:8], np.rot90(maps, 3, axes=(1, 2)))
    exact = occlusion_maps(keras_predict_fn(deep), turned_stamps, chunk_size=2)[0]
    np.testing.assert_allclose(exact, turned_maps, atol=2e-6)


def test_the_seed_net_is_not_turn_invariant():
    keras.utils.set_random_seed(7)
    seed = build_classifier("seed", (3,))
    stamps = np.random.default_rng(8).random((16, 21, 21, 4)).astype(np.float32)
    assert not quarter_turn_invariant(seed, stamps)

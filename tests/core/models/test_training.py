"""The shared training loop and its batch-by-batch feeding."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline.core.models.training import (  # noqa: E402
    ArrayBatches,
    fit_early_stopping,
    with_quarter_turns,
)


def test_array_batches_cover_every_row_once_per_epoch_aligned():
    a = np.arange(10, dtype=np.float32)[:, None] * [1, 1]  # row i holds i
    b = np.arange(10, dtype=np.float32) * 10
    y = np.arange(10)
    batches = ArrayBatches([a, b], y, 4, seed=0)
    assert len(batches) == 3  # 4 + 4 + 2
    seen = []
    for index in range(len(batches)):
        (first, second), targets = batches[index]
        np.testing.assert_array_equal(first[:, 0], targets)
        np.testing.assert_array_equal(second, targets * 10)
        seen.extend(targets.tolist())
    assert sorted(seen) == list(range(10))
    order = [batches[i][1].tolist() for i in range(3)]
    batches.on_epoch_end()
    assert [batches[i][1].tolist() for i in range(3)] != order  # reshuffled
    fixed = ArrayBatches([a], y, 4, shuffle=False)
    assert fixed[2][1].tolist() == [8, 9]
    single = ArrayBatches(a, y, 4, shuffle=False)  # one input array stays one array
    np.testing.assert_array_equal(single[2][0], a[8:10])


def test_streamed_fit_learns_like_the_array_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    losses = {}
    for stream in (False, True):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(1)(inputs)[:, 0])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        history, _ = fit_early_stopping(model, ([x], y), ([x[:64]], y[:64]), batch_size=32,
                                        epochs=30, patience=3, stream=stream)
        losses[stream] = history["val_loss"]
        kernel = model.get_weights()[0][:, 0]  # the true weights, both ways
        np.testing.assert_allclose(kernel, [1.0, -2.0, 0.5], atol=0.05)
    assert losses[True][-1] < 0.01 * losses[True][0]


def test_quarter_turns_are_added_only_where_they_are_exact_maps():
    import keras

    from pipeline.core.models.classifiers import build_classifier
    from pipeline.core.params import OcclusionParams

    rng = np.random.default_rng(9)
    split = {"images": rng.random((3, 21, 21, 4)).astype(np.float32),
             "maps": rng.normal(0, 0.1, (3, 21, 21)).astype(np.float32),
             "labels": np.array([1, 0, 1]), "target": np.array([1, 0, 0]),
             "base_prob": np.array([0.9, 0.8, 0.7], np.float32)}
    keras.utils.set_random_seed(10)
    deep = build_classifier("deephits", (0, 1, 2, 3))
    turned, why = with_quarter_turns(split, deep, OcclusionParams())
    assert why.startswith("used")
    assert {key: len(value) for key, value in turned.items()} == dict.fromkeys(split, 12)
    np.testing.assert_array_equal(turned["maps"][3:6], np.rot90(split["maps"], 1, axes=(1, 2)))
    np.testing.assert_array_equal(turned["images"][9:12],
                                  np.rot90(split["images"], 3, axes=(1, 2)))
    np.testing.assert_array_equal(turned["target"], np.tile(split["target"], 4))

    same, why = with_quarter_turns(split, deep, OcclusionParams(stride=3))
    assert same is split and "patch grid is not symmetric" in why
    same, why = with_quarter_turns(split, build_classifier("seed", (3,)), OcclusionParams())
    assert same is split and "output changes when a stamp is turned" in why

"""The shared training loop and its batch-by-batch feeding."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline.core.models.training import ArrayBatches, fit_early_stopping  # noqa: E402


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

"""Estimator builders, the conditioning layer, the loss and the explainer round trip."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline.core.models import estimators  # noqa: E402
from pipeline.core.models.classifiers import build_classifier  # noqa: E402
from pipeline.core.models.layers import (  # noqa: E402
    AlignedPointwise,
    AlignRotations,
    ClassCondition,
    Headroom,
    RotationStack,
)

STAMPS = np.random.default_rng(0).random((6, 21, 21, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def seed_classifier():
    keras.utils.set_random_seed(1)
    return build_classifier("seed", (3,))


@pytest.mark.parametrize("arch", sorted(estimators.ESTIMATORS))
# taps: 2 one-hot + 1 margin + 10 penultimate + the seed conv's 21 x 21 x 8 activations
@pytest.mark.parametrize("condition, dim", [("class", 2), ("margin", 3), ("features", 13),
                                            ("taps", 13 + 21 * 21 * 8)])
def test_each_builder_maps_stamps_to_21x21_maps_in_range(seed_classifier, arch, condition, dim):
    vector = estimators.condition_model(seed_classifier, condition).predict(STAMPS, verbose=0)
    assert vector.shape == (6, dim)
    if arch == "headroom_ae" and condition == "class":
        with pytest.raises(ValueError, match="needs the softmax margin"):
            estimators.build_estimator(arch, seed_classifier, (3,), dim)
        return
    if arch == "tap_ae" and condition != "taps":
        with pytest.raises(ValueError, match="needs the taps condition"):
            estimators.build_estimator(arch, seed_classifier, (3,), dim)
        return
    model = estimators.build_estimator(arch, seed_classifier, (3,), dim)
    maps = model.predict([STAMPS, vector], verbose=0)
    assert maps.shape == (6, 21, 21) and np.abs(maps).max() <= 1.0


def test_seed_ae_encoder_is_the_classifiers_frozen_conv(seed_classifier):
    model = estimators.build_estimator("seed_ae", seed_classifier, (3,), 2)
    mirror, source = model.get_layer("enc_conv"), seed_classifier.get_layer("conv")
    assert not mirror.trainable
    for copied, original in zip(mirror.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, original)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=estimators.relative_map_loss(0.1))
    before = [w.copy() for w in model.get_layer("code").get_weights()]
    model.fit([STAMPS, np.eye(2)[[0, 1] * 3]], np.random.default_rng(1).normal(
        0, 0.1, (6, 21, 21)), epochs=2, verbose=0)
    for copied, original in zip(mirror.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, original)  # frozen: unchanged by training
    assert any(not np.array_equal(a, b)
               for a, b in zip(before, model.get_layer("code").get_weights(), strict=True))


def test_deephits_mirror_copies_both_convs_before_the_first_pool():
    keras.utils.set_random_seed(2)
    deep = build_classifier("deephits", (0, 1, 2, 3))
    spec = estimators.mirror_spec(deep)
    assert [(c["name"], c["filters"], c["kernel_size"], c["slope"]) for c in spec] == [
        ("conv1", 32, (4, 4), 0.01), ("conv2", 32, (3, 3), 0.01)]
    model = estimators.build_estimator("gated_ae", deep, (0, 1, 2, 3), 3)
    np.testing.assert_array_equal(model.get_layer("enc_conv2").get_weights()[0],
                                  deep.get_layer("conv2").get_weights()[0])


def test_class_condition_by_hand():
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1], [1.0, 0.0]], np.float32)
    one_hot = ClassCondition()(probabilities).numpy()
    np.testing.assert_array_equal(one_hot, [[0, 1], [1, 0], [1, 0]])
    with_margin = ClassCondition(margin=True)(probabilities).numpy()
    np.testing.assert_allclose(with_margin[:, 2], [np.log(4) / 10, np.log(9) / 10, 3.0],
                               rtol=1e-5)


def test_headroom_scales_the_shares_by_the_probabilitys_exact_bounds():
    probabilities = np.array([[0.3, 0.7], [0.99, 0.01]], np.float32)
    condition = ClassCondition(margin=True)(probabilities)
    positive = np.zeros((2, 21, 21), np.float32)
    negative = np.zeros((2, 21, 21), np.float32)
    positive[:, 0, 0] = 1.0  # the whole probability drops
    negative[:, 1, 1] = 1.0  # the probability rises to 1
    positive[:, 2, 2] = negative[:, 2, 2] = 0.5
    maps = Headroom()([positive, negative, condition]).numpy()
    p = np.array([0.7, 0.99])
    np.testing.assert_allclose(maps[:, 0, 0], p, rtol=1e-5)
    np.testing.assert_allclose(maps[:, 1, 1], -(1 - p), rtol=1e-4)
    np.testing.assert_allclose(maps[:, 2, 2], 0.5 * p - 0.5 * (1 - p), rtol=1e-4)
    assert np.count_nonzero(maps) == 6


def test_headroom_ae_maps_stay_inside_the_bounds_and_reload(seed_classifier, tmp_path):
    model = estimators.build_estimator("headroom_ae", seed_classifier, (3,), 3)
    explainer = estimators.explainer(seed_classifier, model, "margin")
    maps = explainer.predict(STAMPS, verbose=0)
    p = seed_classifier.predict(STAMPS, verbose=0).max(axis=1)[:, None, None]
    assert (maps <= p + 1e-6).all() and (maps >= -(1 - p) - 1e-6).all()
    explainer.save(tmp_path / "headroom.keras")
    again = keras.saving.load_model(tmp_path / "headroom.keras", compile=False)
    np.testing.assert_allclose(again.predict(STAMPS, verbose=0), maps, atol=1e-6)


def test_align_rotations_turns_each_rotation_back_into_the_stamps_frame():
    # Through an identity "tower" the four stacked rotations, turned back, are the stamp.
    aligned = AlignRotations()(RotationStack()(STAMPS)).numpy()
    assert aligned.shape == (6, 21, 21, 16)
    for k in range(4):
        np.testing.assert_array_equal(aligned[..., 4 * k:4 * k + 4], STAMPS)


def test_taps_condition_holds_the_classifiers_own_activations(seed_classifier):
    keras.utils.set_random_seed(3)
    deep = build_classifier("deephits", (0, 1, 2, 3))
    assert estimators.tap_shape(seed_classifier) == (21, 21, 8)
    assert estimators.tap_shape(deep) == (10, 10, 256)  # last conv 64 x 4 rotations
    vector = estimators.condition_model(seed_classifier, "taps").predict(STAMPS, verbose=0)
    conv = keras.Model(seed_classifier.input, seed_classifier.get_layer("conv").output)
    np.testing.assert_allclose(vector[:, 13:], conv.predict(STAMPS, verbose=0).reshape(6, -1),
                               atol=1e-6)
    # deephits: rotation k's last-conv maps (k-th block of the 4B batch), turned back by k
    # quarter turns with numpy, side by side on the channel axis.
    vector = estimators.condition_model(deep, "taps").predict(STAMPS, verbose=0)
    last = keras.Model(deep.input, deep.get_layer("conv5_act").output).predict(STAMPS, verbose=0)
    blocks = [np.rot90(last[6 * k:6 * (k + 1)], -k, axes=(1, 2)) for k in range(4)]
    np.testing.assert_allclose(vector[:, -10 * 10 * 256:],
                               np.concatenate(blocks, axis=-1).reshape(6, -1), atol=1e-5)
    np.testing.assert_allclose(vector[:, :2].argmax(axis=1),
                               deep.predict(STAMPS, verbose=0).argmax(axis=1))


def test_tap_ae_maps_stay_inside_the_bounds_and_reload(tmp_path):
    keras.utils.set_random_seed(4)
    deep = build_classifier("deephits", (0, 1, 2, 3))
    dim = estimators.condition_model(deep, "taps").output.shape[-1]
    model = estimators.build_estimator("tap_ae", deep, (0, 1, 2, 3), dim)
    assert not [layer for layer in model.layers if layer.name.startswith("enc_")]
    explainer = estimators.explainer(deep, model, "taps")
    maps = explainer.predict(STAMPS, verbose=0)
    p = deep.predict(STAMPS, verbose=0).max(axis=1)[:, None, None]
    assert maps.shape == (6, 21, 21)
    assert (maps <= p + 1e-6).all() and (maps >= -(1 - p) - 1e-6).all()
    explainer.save(tmp_path / "tap.keras")
    again = keras.saving.load_model(tmp_path / "tap.keras", compile=False)
    np.testing.assert_allclose(again.predict(STAMPS, verbose=0), maps, atol=1e-6)


def test_aligned_pointwise_is_the_1x1_conv_of_the_aligned_rotations_by_hand():
    # numpy: turn rotation k's maps back by k quarter turns, stack the four on the channel
    # axis, then one 1x1 conv (a matmul per pixel) and ReLU.
    rng = np.random.default_rng(5)
    taps = rng.normal(size=(4 * 3, 5, 5, 6)).astype(np.float32)  # 3 stamps x 4 rotations
    conv = keras.layers.Conv2D(7, 1, activation="relu")
    conv.build((None, 5, 5, 24))
    conv.set_weights([rng.normal(size=(1, 1, 24, 7)).astype(np.float32),
                      rng.normal(size=7).astype(np.float32)])
    aligned = np.concatenate([np.rot90(taps[3 * k:3 * (k + 1)], -k, axes=(1, 2))
                              for k in range(4)], axis=-1)
    expected = np.maximum(aligned @ conv.get_weights()[0][0, 0] + conv.get_weights()[1], 0)
    layer = AlignedPointwise.from_conv(conv, name="fused")
    np.testing.assert_allclose(layer(taps).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a 1x1 convolution"):
        wide = keras.layers.Conv2D(7, 3)
        wide.build((None, 5, 5, 24))
        AlignedPointwise.from_conv(wide, name="bad")


@pytest.mark.parametrize("arch", ["seed", "deephits"])
def test_tap_ae_explainer_takes_the_taps_inside_the_graph_with_the_same_maps(arch, tmp_path):
    # The explainer hands tap_ae the tapped tensor directly; its maps must be those of the
    # estimator fed the flat condition vector it was trained on, before and after a reload.
    keras.utils.set_random_seed(6)
    channels = (3,) if arch == "seed" else (0, 1, 2, 3)
    classifier = build_classifier(arch, channels)
    conditioner = estimators.condition_model(classifier, "taps")
    model = estimators.build_estimator("tap_ae", classifier, channels,
                                       conditioner.output.shape[-1])
    rng = np.random.default_rng(7)  # away from the initial all-near-zero shares
    model.set_weights([w + rng.normal(0, 0.2, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    flat = model.predict([STAMPS, conditioner.predict(STAMPS, verbose=0)], verbose=0)
    explainer = estimators.explainer(classifier, model, "taps")
    names = {layer.name for layer in explainer.layers}
    assert "split_condition" not in names and "flat_taps" not in names
    assert ("aligned_tap_reduce" in names) == (arch == "deephits")
    maps = explainer.predict(STAMPS, verbose=0)
    assert np.abs(flat).max() > 0.05  # the comparison is not between near-zero maps
    # the same sums in another order (per rotation, then turned): float rounding only
    np.testing.assert_allclose(maps, flat, atol=1e-5)
    explainer.save(tmp_path / "fused.keras")
    again = keras.saving.load_model(tmp_path / "fused.keras", compile=False)
    np.testing.assert_allclose(again.predict(STAMPS, verbose=0), maps, atol=1e-6)


def test_relative_map_loss_by_hand():
    y_true = np.zeros((2, 21, 21), np.float32)
    y_true[0, 0, 0] = 0.5  # amplitude 0.5
    y_true[1, 0, 0] = 0.001  # amplitude below the floor 0.01
    y_pred = y_true.copy()
    y_pred[:, 1, 1] = 0.1
    mse = 0.01 / 441
    loss = estimators.relative_map_loss(2.0)
    per_map = np.asarray(loss.call(y_true, y_pred))
    np.testing.assert_allclose(per_map, [mse + 2 * mse / 0.25, mse + 2 * mse / 1e-4], rtol=1e-5)
    assert float(loss(y_true, y_pred)) == pytest.approx(per_map.mean(), rel=1e-5)
    np.testing.assert_allclose(np.asarray(estimators.relative_map_loss(0.0).call(y_true, y_pred)),
                               [mse, mse], rtol=1e-5)
    again = estimators.RelativeMapLoss.from_config(loss.get_config())
    assert (again.shape_weight, again.floor) == (2.0, 0.01)


def test_explainer_saves_and_reloads_with_identical_maps(seed_classifier, tmp_path):
    model = estimators.build_estimator("gated_ae", seed_classifier, (3,), 13)
    explainer = estimators.explainer(seed_classifier, model, "features")
    direct = model.predict([STAMPS, estimators.condition_model(seed_classifier, "features")
                            .predict(STAMPS, verbose=0)], verbose=0)
    np.testing.assert_allclose(explainer.predict(STAMPS, verbose=0), direct, atol=1e-6)
    explainer.save(tmp_path / "explainer.keras")
    again = keras.saving.load_model(tmp_path / "explainer.keras", compile=False)
    np.testing.assert_array_equal(again.predict(STAMPS, verbose=0),
                                  explainer.predict(STAMPS, verbose=0))


def test_unknown_arch_and_condition_are_rejected(seed_classifier):
    with pytest.raises(ValueError, match="unknown estimator arch"):
        estimators.build_estimator("vae", seed_classifier, (3,), 2)
    with pytest.raises(ValueError, match="condition must be one of"):
        estimators.condition_model(seed_classifier, "logits")


@pytest.mark.parametrize("arch", sorted(estimators.ESTIMATORS))
@pytest.mark.parametrize("size", [31, 16])
def test_each_builder_follows_the_classifiers_stamp_geometry(arch, size):
    """Decoder grids, U-Net padding and the explainer's input come from the classifier's
    input: a 31x31 (odd) or 16x16 (even) three-channel stamp gives maps of its size."""
    from pipeline.core.geometry import StampGeometry

    geometry = StampGeometry(size, size, ("template", "science", "difference"))
    keras.utils.set_random_seed(2)
    classifier = build_classifier("seed", ["difference"], geometry)
    condition = "taps" if arch == "tap_ae" else "features"
    stamps = np.random.default_rng(1).random((3, *geometry.shape)).astype(np.float32)
    vector = estimators.condition_model(classifier, condition).predict(stamps, verbose=0)
    model = estimators.build_estimator(arch, classifier, (2,), vector.shape[1])
    assert model.predict([stamps, vector], verbose=0).shape == (3, size, size)
    explainer = estimators.explainer(classifier, model, condition)
    assert tuple(explainer.input.shape[1:]) == (size, size, 3)
    assert explainer.predict(stamps, verbose=0).shape == (3, size, size)

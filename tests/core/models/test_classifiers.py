"""Classifier builders, custom layers and the classification figures."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.core.classification import classification_figures
from pipeline.core.models.classifiers import build_classifier
from pipeline.core.models.layers import rotate90


@pytest.fixture(scope="module")
def stamps():
    return np.random.default_rng(0).random((6, 21, 21, 4)).astype(np.float32)


def test_seed_has_exactly_the_studys_8112_parameters():
    # conv 3*3*1*8+8 = 80; dense (10*10*8)*10+10 = 8010; output 10*2+2 = 22
    assert build_classifier("seed", (3,)).count_params() == 80 + 8010 + 22


def test_output_shapes_are_probabilities(stamps):
    for arch, channels in (("seed", (3,)), ("deephits", (0, 1, 2, 3))):
        probabilities = build_classifier(arch, channels)(stamps).numpy()
        assert probabilities.shape == (6, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_deephits_size_is_deep_hits_class():
    assert 200_000 < build_classifier("deephits", (0, 1, 2, 3)).count_params() < 220_000


def test_rotate90_matches_numpy(stamps):
    np.testing.assert_array_equal(rotate90(stamps).numpy(), np.rot90(stamps, 1, axes=(1, 2)))


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_deephits_is_rotation_invariant(stamps, turns):
    keras.utils.set_random_seed(1)
    model = build_classifier("deephits", (0, 1, 2, 3))
    rotated = np.ascontiguousarray(np.rot90(stamps, turns, axes=(1, 2)))
    np.testing.assert_allclose(model(rotated).numpy(), model(stamps).numpy(), atol=1e-5)


def test_a_model_sees_only_its_channels(stamps):
    model = build_classifier("seed", (3,))
    changed = stamps.copy()
    changed[..., :3] = 0.0
    np.testing.assert_array_equal(model(changed).numpy(), model(stamps).numpy())
    changed[..., 3] = 1.0 - changed[..., 3]
    assert not np.allclose(model(changed).numpy(), model(stamps).numpy())


def test_saved_model_with_custom_layers_reloads(tmp_path, stamps):
    model = build_classifier("deephits", (0, 2))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again(stamps).numpy(), model(stamps).numpy(), atol=1e-6)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="unknown classifier arch"):
        build_classifier("resnet", (3,))
    with pytest.raises(ValueError, match="channels must be"):
        build_classifier("seed", (4,))
    with pytest.raises(ValueError, match="channels must be"):
        build_classifier("seed", ())


def test_classification_figures_by_hand():
    labels = np.array([1, 1, 0, 0])
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7]])
    figures = classification_figures(labels, probabilities)
    # predicted 1, 0, 0, 1: one of each cell
    assert figures["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert figures["accuracy"] == 0.5
    assert figures["precision"] == 0.5 and figures["recall"] == 0.5 and figures["f1"] == 0.5
    expected_loss = -np.mean(np.log([0.8, 0.4, 0.9, 0.3]))
    assert figures["loss"] == pytest.approx(expected_loss)
    # real scores 0.8, 0.4 vs bogus 0.1, 0.7: pairs ordered right 3 of 4
    assert figures["roc_auc"] == pytest.approx(0.75)


def test_classification_figures_reject_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        classification_figures(np.array([0, 1]), np.array([0.2, 0.8]))

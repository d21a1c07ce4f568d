"""The doubt head's pieces: its layers by hand, its target, and a fit on a hand-made set."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline.core import fidelity, selective  # noqa: E402
from pipeline.core.models import doubt  # noqa: E402
from pipeline.core.models.layers import Doubt, ExplainedClass, MapSummary  # noqa: E402
from pipeline.core.models.training import fit_doubt_head  # noqa: E402


def test_map_summary_by_hand():
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0, 0, 0], maps[0, 2, 2] = 0.5, -0.25  # amplitude 0.5, sum |m| 0.75 over 9 pixels
    summary = np.asarray(MapSummary()(maps))
    np.testing.assert_allclose(summary[0], [np.log10(0.5), 1.0, 0.5, 0.75 / 9 / 0.5],
                               rtol=1e-6)
    # an empty map: amplitude floored at 1e-4, no sign, no spread
    np.testing.assert_allclose(summary[1], [-4.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_doubt_layer_squares_the_positive_score_and_caps_at_two():
    scores = np.array([[-3.0], [0.0], [0.5], [1.2], [5.0]], np.float32)
    np.testing.assert_allclose(np.asarray(Doubt()(scores)), [0.0, 0.0, 0.25, 1.44, 2.0],
                               rtol=1e-6)


def test_explained_class_is_the_argmax_and_its_probability():
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7]], np.float32)
    target, base_prob = ExplainedClass()(probabilities)
    np.testing.assert_array_equal(np.asarray(target), [0, 1])
    assert np.asarray(target).dtype == np.int32
    np.testing.assert_allclose(np.asarray(base_prob), [0.9, 0.7])


def test_doubt_target_of_an_exact_estimate_is_the_minimum():
    exact = np.random.default_rng(0).normal(size=(3, 21, 21)).astype(np.float32)
    error = selective.error_of(fidelity.pearson_r(exact, exact), np.ones(3, bool))
    np.testing.assert_allclose(doubt.doubt_target(error), 0.0, atol=1e-3)
    np.testing.assert_allclose(doubt.doubt_target([0.0, 0.25, 1.0, 2.0, -1e-9]),
                               [0.0, 0.5, 1.0, np.sqrt(2.0), 0.0], rtol=1e-6)


def test_doubt_condition_size_drops_the_taps():
    assert doubt.doubt_condition_size(3 + 16 + 21 * 21 * 8, 21 * 21 * 8) == 19
    assert doubt.doubt_condition_size(3) == 3
    with pytest.raises(ValueError, match="nothing for the doubt head"):
        doubt.doubt_condition_size(10, 9)


def _hand_made_set(n: int = 400, seed: int = 0):
    """Stamps whose exact map is a peak at the stamp's bright pixel; half the estimates
    equal the exact map, half put the peak elsewhere (r far below 1) and are also
    flagged by a stamp feature the head can see (channel 3's corner)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.2, size=(n, 21, 21, 4)).astype(np.float32)
    exact = np.zeros((n, 21, 21), np.float32)
    estimate = np.zeros_like(exact)
    wrong = np.arange(n) % 2 == 1
    for i in range(n):
        y, x = rng.integers(3, 18, size=2)
        images[i, y, x, 3] = 1.0
        exact[i, y - 1:y + 2, x - 1:x + 2] = 0.5
        if wrong[i]:
            images[i, :3, :3, 3] = 1.0
            y, x = (y + 9) % 15 + 3, (x + 9) % 15 + 3
        estimate[i, y - 1:y + 2, x - 1:x + 2] = 0.5
    condition = np.tile([[0.0, 1.0, 0.3]], (n, 1)).astype(np.float32)
    r = fidelity.pearson_r(estimate, exact)
    error = selective.error_of(r, fidelity.amplitude(exact) >= fidelity.NON_TRIVIAL)
    return {"images": images, "condition": condition, "maps": estimate,
            "error": error}, wrong


def test_fitted_head_gives_maps_equal_to_the_exact_ones_the_least_doubt():
    split, wrong = _hand_made_set()
    assert (split["error"][~wrong] < 1e-6).all() and (split["error"][wrong] > 0.9).all()
    model, history, _ = fit_doubt_head(split, channels=(3,), seed=0, epochs=40,
                                       patience=40, batch_size=32, learning_rate=0.003)
    assert len(history["loss"]) == 40
    test, wrong = _hand_made_set(100, seed=1)
    scores = np.asarray(model.predict([test["images"], test["condition"], test["maps"]],
                                      verbose=0))
    assert scores.shape == (100,) and (scores >= 0).all() and (scores <= 2).all()
    # exact estimates sit at (or next to) the bottom of the range, wrong ones far above
    assert np.median(scores[~wrong]) < 0.05
    assert np.median(scores[wrong]) > 0.5
    assert selective.spearman(scores, test["error"]) > 0.8
    chosen = selective.rows_to_recompute(scores, 0.5)
    assert (chosen == wrong).mean() > 0.95


def test_fit_doubt_head_refuses_too_few_maps():
    split, _ = _hand_made_set(8)
    with pytest.raises(ValueError, match="at least 10 maps"):
        fit_doubt_head(split, channels=(3,))


@pytest.mark.parametrize("arch, condition", [("gated_ae", "features"), ("tap_ae", "taps")])
def test_explainer_with_doubt_matches_its_parts_and_reloads(arch, condition, tmp_path):
    from pipeline.core.models import estimators
    from pipeline.core.models.classifiers import build_classifier

    keras.utils.set_random_seed(3)
    classifier = build_classifier("seed", (3,))
    dim = 13 if condition == "features" else 13 + 21 * 21 * 8
    estimator = estimators.build_estimator(arch, classifier, (3,), dim)
    head = doubt.doubt_model(doubt.build_doubt_head((21, 21, 4), (3,), 13))
    stamps = np.random.default_rng(2).uniform(size=(6, 21, 21, 4)).astype(np.float32)
    full = estimators.explainer_with_doubt(classifier, estimator, condition, head)
    out = {key: np.asarray(value) for key, value in full(stamps, training=False).items()}
    assert sorted(out) == ["base_prob", "doubt", "maps", "target"]
    # the parts, each computed on its own
    maps = estimators.explainer(classifier, estimator, condition).predict(stamps, verbose=0)
    probabilities = classifier.predict(stamps, verbose=0)
    vector = estimators.condition_model(classifier, "features").predict(stamps, verbose=0)
    np.testing.assert_allclose(out["maps"], maps, atol=1e-6)
    np.testing.assert_array_equal(out["target"], probabilities.argmax(axis=1))
    np.testing.assert_allclose(out["base_prob"], probabilities.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(out["doubt"], head.predict([stamps, vector, maps], verbose=0),
                               atol=1e-6)
    full.save(tmp_path / "explainer.keras")
    again = keras.saving.load_model(tmp_path / "explainer.keras", compile=False,
                                    safe_mode=True)
    reloaded = again(stamps, training=False)
    for key in out:
        np.testing.assert_allclose(np.asarray(reloaded[key]), out[key], atol=1e-6)
    no_doubt = estimators.explainer_with_doubt(classifier, estimator, condition)(stamps)
    assert "doubt" not in no_doubt

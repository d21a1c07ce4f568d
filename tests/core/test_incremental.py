"""The incremental exact engine against the naive loop, the batched engine, closed-form
multiply-add counts, and the models it must refuse."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from conftest import naive_maps, seed_like_model
from pipeline.core.explain import engine_for
from pipeline.core.geometry import HITS
from pipeline.core.incremental import IncrementalOcclusionEngine, NotIncremental, plan_chain
from pipeline.core.models.classifiers import build_classifier, seen_channels_predict_fn
from pipeline.core.occlusion import OcclusionEngine
from pipeline.core.params import OcclusionParams

WITNESS_DIR = Path(__file__).resolve().parents[3] / "shared" / "witness"


def _scaled(model, factor=1.0, seed=5):
    """``model`` with fresh random kernels (He-scaled, times ``factor``) and small random
    biases, its output layer scaled down until no probability of some random stamps
    passes 0.99: untrained nets give maps of ~1e-3, saturated ones maps of 0."""
    rng = np.random.default_rng(seed)
    kernels = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None]
    for layer in kernels:
        shape = layer.kernel.shape
        layer.kernel.assign(rng.normal(0, factor * np.sqrt(2 / np.prod(shape[:-1])),
                                       shape).astype(np.float32))
        if layer.bias is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    probe = rng.random((8, 21, 21, 4)).astype(np.float32)  # every model here takes these
    last = kernels[-1].kernel
    while model(probe, training=False).numpy().max() > 0.99:
        last.assign(last.numpy() * 0.5)
    return model


def _chain(input_shape, *body):
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input(input_shape), *body])


def deep_witness_like(input_shape=(21, 21, 1)):
    """The deep witness's layers (linear convs and dense layers, 27x27 input reached by
    zero padding), narrow."""
    return _chain(input_shape, layers.ZeroPadding2D(3),
                  layers.Conv2D(4, 4, padding="same"), layers.Conv2D(4, 3, padding="same"),
                  layers.MaxPooling2D(2), *[layers.Conv2D(6, 3, padding="same")
                                            for _ in range(3)],
                  layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(8), layers.Dense(8),
                  layers.Dropout(0.5), layers.Dense(2, activation="softmax"))


def odd_layers(input_shape=(21, 21, 2)):
    """Strides, valid and same pooling, cropping, batch norm, several activations."""
    return _chain(input_shape, layers.Cropping2D(((1, 0), (2, 1))),
                  layers.Conv2D(5, 3, strides=2, padding="valid", activation="elu"),
                  layers.BatchNormalization(), layers.LeakyReLU(0.2),
                  layers.MaxPooling2D(3, strides=2, padding="same"),
                  layers.Conv2D(4, 2, padding="same", activation="tanh"),
                  layers.AveragePooling2D(2, padding="valid"), layers.Flatten(),
                  layers.Dropout(0.1), layers.Dense(6, activation="relu"),
                  layers.Dense(3, activation="softmax"))


MODELS = {
    "seed": lambda: _scaled(build_classifier("seed", ["snr_difference"], HITS)),
    "deephits": lambda: _scaled(build_classifier("deephits", list(HITS.channels), HITS,
                                                 filters=4, dense=8)),
    "seed_witness_like": lambda: _scaled(seed_like_model((21, 21, 4))),
    "deep_witness_like": lambda: _scaled(deep_witness_like((21, 21, 4))),
    "odd_layers": lambda: _scaled(odd_layers((21, 21, 4))),
}
SETTINGS = [dict(patch=3, stride=1, fill=0.0, padding="same", reduce="mean"),
            dict(patch=4, stride=3, fill=0.5, padding="valid", reduce="sum")]


@pytest.fixture(scope="module")
def stamps():
    return np.random.default_rng(0).random((2, 21, 21, 4)).astype(np.float32)


@pytest.mark.parametrize("settings", SETTINGS, ids=["default", "valid-stride3-fill"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_the_naive_loop(name, settings, stamps):
    model = MODELS[name]()
    engine = IncrementalOcclusionEngine(model, 21, 21, **settings)
    maps, target, base_prob = engine.maps(stamps, chunk_size=2)
    expected = naive_maps(lambda x: model(x, training=False).numpy(), stamps, **settings)
    assert np.abs(expected).max() > 1e-2  # non-trivial maps
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    probabilities = model(stamps, training=False).numpy()
    np.testing.assert_array_equal(target, probabilities.argmax(1))
    np.testing.assert_allclose(base_prob, probabilities.max(1), atol=1e-6)


@pytest.mark.parametrize("name", ["seed", "deephits", "odd_layers"])
def test_equals_the_batched_engine_for_any_chunking_and_given_targets(name):
    model = MODELS[name]()
    stamps = np.random.default_rng(1).random((5, 21, 21, 4)).astype(np.float32)
    predict, channels = seen_channels_predict_fn(model)
    batched = OcclusionEngine(predict, 21, 21, channels=channels)
    incremental = IncrementalOcclusionEngine(model, 21, 21)
    target = np.array([0, 1, 1, 0, 1])
    reference = batched.maps(stamps, target=target, chunk_size=5)[0]
    for chunk in (1, 2, 5):
        maps = incremental.maps(stamps, target=target, chunk_size=chunk)[0]
        np.testing.assert_allclose(maps, reference, atol=1e-5)
    assert incremental.maps(stamps[:0])[0].shape == (0, 21, 21)


def test_multiply_adds_of_the_seed_net_worked_out_by_hand():
    engine = IncrementalOcclusionEngine(MODELS["seed"](), 21, 21)
    # the full net per image: conv 21*21 cells * 3*3*1*8, dense 800*10, output 10*2
    full = 21 * 21 * 72 + 800 * 10 + 10 * 2
    # per position: the conv's 5x5 window, the dense's 3x3x8 changed pooled inputs, the
    # output layer; plus one full pass for the cache
    window = 5 * 5 * 72 + 3 * 3 * 8 * 10 + 10 * 2
    assert engine.multiply_adds() == {"batched": 441 * full, "incremental": 441 * window + full}


@pytest.mark.parametrize("model, reason", [
    (lambda: _chain((21, 21, 1), layers.Conv2D(2, 3, dilation_rate=2), layers.Flatten(),
                    layers.Dense(2)), "dilated"),
    (lambda: _chain((21, 21, 1), layers.Conv2D(2, 3), layers.GlobalAveragePooling2D(),
                    layers.Dense(2)), "GlobalAveragePooling2D"),
    (lambda: _chain((21, 21, 1), layers.Conv2D(2, 3), layers.AveragePooling2D(2, padding="same"),
                    layers.Flatten(), layers.Dense(2)), "same padding"),
    (lambda: _chain((21, 21, 1), layers.Flatten(), layers.Activation("relu"), layers.Dense(2)),
     "not followed by a Dense"),
    (lambda: _chain((21, 21, 1), layers.Conv2D(2, 3)), "no Flatten"),
])
def test_unsupported_models_are_refused_naming_the_layer(model, reason):
    with pytest.raises(NotIncremental, match=reason):
        plan_chain(model())


def _residual():
    inputs = keras.Input((21, 21, 1))
    x = layers.Conv2D(1, 3, padding="same")(inputs)
    x = layers.Add()([inputs, x])
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(layers.Flatten()(x)))


def test_engine_for_falls_back_with_a_log_line_and_refuses_an_explicit_choice(caplog):
    occlusion = OcclusionParams()
    assert occlusion.engine == "auto"
    assert engine_for(MODELS["seed"](), occlusion).name == "incremental"
    with caplog.at_level(logging.WARNING, logger="pipeline.occlusion"):
        engine = engine_for(_residual(), occlusion)
    assert engine.name == "batched"
    assert "takes 2 tensors" in caplog.text and "batched engine" in caplog.text
    explicit = OcclusionParams.from_dict({"engine": "incremental"})
    with pytest.raises(ValueError, match="cannot run classifier"):
        engine_for(_residual(), explicit)
    assert engine_for(MODELS["seed"](), OcclusionParams.from_dict(
        {"engine": "batched"})).name == "batched"


@pytest.mark.skipif(not WITNESS_DIR.is_dir(), reason="the real-data witnesses are not here")
@pytest.mark.parametrize("file, pad", [("seed_cnn_real_hits.h5", 0), ("deep_cnn_real_hits.h5", 3)])
def test_the_witness_nets_run_incrementally_and_exactly(file, pad, stamps):
    from pipeline.core.models.imported import import_classifier

    wrapper, _ = import_classifier(WITNESS_DIR / file, HITS, ["snr_difference"], pad=pad)
    engine = engine_for(wrapper, OcclusionParams())
    assert engine.name == "incremental"
    predict, channels = seen_channels_predict_fn(wrapper)
    reference = OcclusionEngine(predict, 21, 21, channels=channels).maps(stamps)[0]
    maps = engine.maps(stamps)[0]
    assert np.abs(reference).max() > 1e-2
    np.testing.assert_allclose(maps, reference, atol=1e-5)

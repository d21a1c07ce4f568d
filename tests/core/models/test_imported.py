"""Importing a classifier the user already has: legacy Keras 2 HDF5 files written here by
hand in the real files' layout, a Keras 3 .keras file, a SavedModel written by TensorFlow.

Each imported model is held to the model it came from (the same weights run by Keras 3 on
inputs selected and padded here with numpy) to 1e-6, and its exact maps to a naive loop.
"""

from __future__ import annotations

import hashlib
import json

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import (
    keras2_config,
    naive_maps,
    seed_like_model,
    write_legacy_sequential,
    write_legacy_weights,
)
from pipeline.core.explain import engine_for
from pipeline.core.geometry import HITS, StampGeometry
from pipeline.core.models.estimators import condition_model, mirror_spec
from pipeline.core.models.imported import (
    ClassifierFileError,
    check_probabilities,
    file_sha256,
    import_classifier,
    is_opaque,
)
from pipeline.core.params import OcclusionParams


@pytest.fixture(scope="module")
def stamps():
    return np.random.default_rng(5).random((6, 21, 21, 4)).astype(np.float32)


def _branched(input_shape=(21, 21, 1)):
    """A functional net: two conv branches added, batch norm, leaky ReLU, softmax Dense."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input(input_shape, name="input_1")
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    b = keras.layers.Conv2D(4, 5, padding="same", name="conv_b")(inputs)
    x = keras.layers.Add(name="add_1")([a, b])
    x = keras.layers.BatchNormalization(name="bn_1")(x)
    x = keras.layers.LeakyReLU(negative_slope=0.1, name="leaky_1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    x = keras.layers.Flatten(name="flatten_1")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="dense_out")(x)
    model = keras.Model(inputs, outputs)
    model.set_weights([w * 3 if w.ndim > 1 else w + 0.1 for w in model.get_weights()])
    return model


def write_legacy_functional(model, path):
    wiring = {"conv_a": [[["input_1", 0, 0, {}]]], "conv_b": [[["input_1", 0, 0, {}]]],
              "add_1": [[["conv_a", 0, 0, {}], ["conv_b", 0, 0, {}]]],
              "bn_1": [[["add_1", 0, 0, {}]]], "leaky_1": [[["bn_1", 0, 0, {}]]],
              "pool_1": [[["leaky_1", 0, 0, {}]]], "flatten_1": [[["pool_1", 0, 0, {}]]],
              "dense_out": [[["flatten_1", 0, 0, {}]]]}
    specs = [{"name": "input_1", "class_name": "InputLayer", "inbound_nodes": [],
              "config": {"name": "input_1", "batch_input_shape": [None, 21, 21, 1]}}]
    for layer in model.layers[1:]:
        spec = keras2_config(layer)
        specs.append({"name": layer.name, **spec, "inbound_nodes": wiring[layer.name]})
    config = {"class_name": "Model", "config": {
        "name": "model_1", "layers": specs, "input_layers": [["input_1", 0, 0]],
        "output_layers": [["dense_out", 0, 0]]}}
    with h5py.File(path, "w") as h5:
        h5.attrs["keras_version"] = b"2.2.4"
        h5.attrs["model_config"] = json.dumps(config)
        write_legacy_weights(h5, model)
    return path


def _seen(stamps, channels, pad=0):
    x = stamps[..., list(channels)]
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x


def _maps_equal_naive(wrapper, stamps):
    occlusion = OcclusionParams()
    engine = engine_for(wrapper, occlusion)
    maps, _, _ = engine.maps(stamps[:2], chunk_size=2)
    expected = naive_maps(lambda x: wrapper(x, training=False).numpy(), stamps[:2],
                          occlusion.patch, occlusion.stride, occlusion.fill,
                          occlusion.padding, occlusion.reduce)
    assert np.abs(maps).max() > 1e-3  # non-trivial maps
    # The engine classifies 882 occluded copies per call, the loop one: CPU kernels round
    # float32 differently by batch size, ~1e-6 on these p (see test_occlusion).
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_legacy_sequential_equals_the_original_and_its_maps_the_naive_loop(tmp_path, stamps):
    original = seed_like_model()
    path = write_legacy_sequential(original, tmp_path / "seed.h5", (21, 21, 1))
    wrapper, facts = import_classifier(path, HITS, [3])
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0),
                               original.predict(_seen(stamps, [3]), verbose=0), atol=1e-6)
    assert facts["format"] == "h5" and facts["file_input_shape"] == [21, 21, 1]
    assert facts["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert wrapper.count_params() == original.count_params() == 8112
    # the file's Dense + softmax Activation became the Dense "probabilities"; features are
    # the dropout's output, as for the project's own seed net
    assert wrapper.get_layer("probabilities").input.shape[-1] == 10
    assert not facts["opaque"]
    _maps_equal_naive(wrapper, stamps)


def test_input_reached_by_padding_occludes_the_stamp_only(tmp_path, stamps):
    original = seed_like_model((27, 27, 1))
    path = write_legacy_sequential(original, tmp_path / "padded.h5", (27, 27, 1))
    wrapper, _ = import_classifier(path, HITS, ["snr_difference"], pad=3)
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0),
                               original.predict(_seen(stamps, [3], pad=3), verbose=0),
                               atol=1e-6)
    assert wrapper.output.shape[-1] == 2
    _maps_equal_naive(wrapper, stamps)  # the naive loop hides patches of the 21x21 stamp


def test_crop_reaches_a_smaller_input(tmp_path, stamps):
    original = seed_like_model((17, 17, 2))
    path = write_legacy_sequential(original, tmp_path / "cropped.h5", (17, 17, 2))
    wrapper, _ = import_classifier(path, HITS, [2, 3], crop=2)
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0),
                               original.predict(stamps[:, 2:-2, 2:-2, 2:4], verbose=0),
                               atol=1e-6)


def test_reversed_class_order_is_put_back(tmp_path, stamps):
    original = seed_like_model()
    path = write_legacy_sequential(original, tmp_path / "reversed.h5", (21, 21, 1))
    wrapper, _ = import_classifier(path, HITS, [3], real_index=0)
    expected = original.predict(_seen(stamps, [3]), verbose=0)[:, ::-1]
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0), expected, atol=1e-6)


@pytest.mark.parametrize("real_index", [1, 0])
def test_one_sigmoid_unit_becomes_a_probability_pair(tmp_path, stamps, real_index):
    original = seed_like_model(last="sigmoid", units=1)
    path = write_legacy_sequential(original, tmp_path / "sigmoid.h5", (21, 21, 1))
    wrapper, _ = import_classifier(path, HITS, [3], output="sigmoid", real_index=real_index)
    p = original.predict(_seen(stamps, [3]), verbose=0)[:, 0]
    real = p if real_index == 1 else 1 - p
    got = wrapper.predict(stamps, verbose=0)
    np.testing.assert_allclose(got[:, 1], real, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_legacy_functional_config_is_rebuilt_flat(tmp_path, stamps):
    original = _branched()
    path = write_legacy_functional(original, tmp_path / "functional.h5")
    wrapper, _ = import_classifier(path, HITS, [3])
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0),
                               original.predict(_seen(stamps, [3]), verbose=0), atol=1e-6)
    names = [layer.name for layer in wrapper.layers]
    assert {"conv_a", "conv_b", "add_1", "bn_1", "probabilities"} <= set(names)
    assert mirror_spec(wrapper)[0]["name"] == "conv_a"  # inner layers reachable by name


def test_keras3_file_is_retraced_and_saved_wrapper_reloads(tmp_path, stamps):
    original = _branched()
    original.save(tmp_path / "mine.keras")
    wrapper, facts = import_classifier(tmp_path / "mine.keras", HITS, [3])
    expected = original.predict(_seen(stamps, [3]), verbose=0)
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0), expected, atol=1e-6)
    assert facts["format"] == "keras" and "conv_b" in [layer.name for layer in wrapper.layers]
    wrapper.save(tmp_path / "wrapped.keras")
    reloaded = keras.saving.load_model(tmp_path / "wrapped.keras", compile=False)
    np.testing.assert_allclose(reloaded.predict(stamps, verbose=0), expected, atol=1e-6)


def test_savedmodel_is_an_opaque_layer_carried_inside_the_keras_file(tmp_path, stamps):
    original = seed_like_model((27, 27, 1))
    exported = tmp_path / "exported"
    module = tf.Module()
    module.model = original
    module.serve = tf.function(lambda x: {"scores": original(x, training=False)},
                               input_signature=[tf.TensorSpec([None, 27, 27, 1], tf.float32)])
    tf.saved_model.save(module, str(exported), signatures={"serving_default": module.serve})
    wrapper, facts = import_classifier(exported, HITS, [3], pad=3)
    expected = original.predict(_seen(stamps, [3], pad=3), verbose=0)
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0), expected, atol=1e-6)
    assert facts["format"] == "savedmodel" and facts["opaque"] and is_opaque(wrapper)
    assert facts["sha256"] == file_sha256(exported)
    _maps_equal_naive(wrapper, stamps)

    wrapper.save(tmp_path / "wrapped.keras")
    for file in sorted(exported.rglob("*"), reverse=True):  # the original is gone ...
        file.unlink() if file.is_file() else file.rmdir()
    reloaded = keras.saving.load_model(tmp_path / "wrapped.keras", compile=False)
    np.testing.assert_allclose(reloaded.predict(stamps, verbose=0), expected, atol=1e-6)
    # ... and the estimator conditions that need inner layers are refused
    with pytest.raises(ValueError, match="opaque.*class or margin"):
        condition_model(reloaded, "features")
    assert condition_model(reloaded, "margin")(stamps).shape == (6, 3)
    assert mirror_spec(reloaded)[0]["name"] == "conv"  # the default encoder, from scratch


def test_a_directory_hash_covers_names_and_contents(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    (tmp_path / "variables" / "data").write_bytes(b"weights")
    by_hand = hashlib.sha256(b"saved_model.pb\0graph" b"variables/data\0weights").hexdigest()
    assert file_sha256(tmp_path) == by_hand
    (tmp_path / "variables" / "data").write_bytes(b"weightz")
    assert file_sha256(tmp_path) != by_hand


def test_logits_are_not_taken_for_probabilities(tmp_path, stamps):
    original = seed_like_model(last="linear")
    path = write_legacy_sequential(original, tmp_path / "logits.h5", (21, 21, 1))
    wrapper, _ = import_classifier(path, HITS, [3])
    with pytest.raises(ClassifierFileError, match="logits.h5: the model's outputs are not "
                                                  "probabilities"):
        check_probabilities(wrapper, stamps, path)


def _truncated(tmp_path):
    whole = write_legacy_sequential(seed_like_model(), tmp_path / "whole.h5", (21, 21, 1))
    cut = tmp_path / "truncated.h5"
    cut.write_bytes(whole.read_bytes()[:2000])
    return cut


def _edited_config(tmp_path, name, edit):
    path = write_legacy_sequential(seed_like_model(), tmp_path / name, (21, 21, 1))
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        edit(config)
        h5.attrs["model_config"] = json.dumps(config)
    return path


def _wrong_filters(tmp_path):
    return _edited_config(tmp_path, "filters.h5",
                          lambda config: config["config"][0]["config"].update(filters=4))


def _garbled(tmp_path):
    return _edited_config(tmp_path, "garbled.h5",
                          lambda config: config["config"].__setitem__(1, ["not", "a", "dict"]))


def _with_lambda(tmp_path):
    lambda_layer = {"class_name": "Lambda", "config": {"name": "lambda_1",
                                                       "function": ["4wEAAAAAAAAA", None, None]}}
    return _edited_config(tmp_path, "lambda.h5",
                          lambda config: config["config"].__setitem__(2, lambda_layer))


def _not_a_model(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("these are my notes, not a model\n")
    return path


def _weights_only(tmp_path):
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("kernel", data=np.zeros(3))
    return path


def _seed_file(tmp_path):
    return write_legacy_sequential(seed_like_model(), tmp_path / "seed.h5", (21, 21, 1))


def _padded_file(tmp_path):
    return write_legacy_sequential(seed_like_model((27, 27, 1)), tmp_path / "p.h5", (27, 27, 1))


@pytest.mark.parametrize(("make", "kwargs", "message"), [
    (_not_a_model, {}, "notes.h5: not a model file"),
    (_truncated, {}, "truncated.h5: unreadable HDF5, truncated or damaged"),
    (_weights_only, {}, "weights.h5: an HDF5 file without model_config"),
    (_with_lambda, {}, "lambda.h5: layer 'lambda_1' of class 'Lambda' is not supported"),
    (_wrong_filters, {}, r"filters.h5: layer 'conv2d_1' has weights of shapes \[\(3, 3, 1, 8\), "
                         r"\(8,\)\] in the file, its config needs \[\(3, 3, 1, 4\)"),
    (_garbled, {}, "garbled.h5: model_config cannot be rebuilt"),
    (_seed_file, {"channels": [5]}, "seed.h5: channel index 5 is outside the stamps' 4"),
    (_seed_file, {"channels": [2, 3]}, "seed.h5: the model takes 1 channel"),
    (_padded_file, {"pad": 2}, r"p.h5: stamps of 21x21 with pad 2, crop 0 become 25x25, the "
                               r"model takes 27x27 \(use pad 3\)"),
    (_seed_file, {"output": "sigmoid"}, "seed.h5: the model has 2 output"),
    (lambda tmp_path: tmp_path / "missing.h5", {}, "missing.h5: no such file or directory"),
    (lambda tmp_path: tmp_path, {}, "a directory without saved_model.pb"),
])
def test_bad_files_get_one_clear_error_naming_the_file(tmp_path, make, kwargs, message):
    path = make(tmp_path)
    channels = kwargs.pop("channels", [3])
    with pytest.raises(ClassifierFileError, match=message) as caught:
        import_classifier(path, HITS, channels, **kwargs)
    assert str(caught.value).startswith(str(path))


def test_other_stamp_geometries_are_wrapped_from_the_geometry(tmp_path):
    original = seed_like_model((31, 31, 2))
    path = write_legacy_sequential(original, tmp_path / "survey.h5", (31, 31, 2))
    geometry = StampGeometry(31, 31, ("science", "difference", "snr"))
    wrapper, _ = import_classifier(path, geometry, ["difference", "science"])
    stamps = np.random.default_rng(1).random((3, 31, 31, 3)).astype(np.float32)
    np.testing.assert_allclose(wrapper.predict(stamps, verbose=0),
                               original.predict(stamps[..., [1, 0]], verbose=0), atol=1e-6)

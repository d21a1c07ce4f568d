"""The real/bogus classifiers whose decisions the occlusion maps explain.

Builders take the stamp geometry and plain hyperparameters (never an Optuna trial) and
return an uncompiled ``keras.Model`` mapping stamps (B, H, W, C) float32 in [0, 1] to
softmax probabilities (B, K) over the geometry's classes ((bogus, real) for HiTS). Each
model selects the channels it sees itself.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.core.geometry import HITS, StampGeometry
from pipeline.core.models.layers import RotationPool, RotationStack, SelectChannels


def build_seed(geometry: StampGeometry, channels, *, filters=8, dense=10, dropout=0.5,
               name="seed") -> keras.Model:
    """The original study's net: Conv2D(8, 3, same, relu) -> MaxPool(2) -> Flatten ->
    Dense(10, relu) -> Dropout(0.5) -> Dense(2, softmax). 8,112 parameters on one channel
    of a 21x21 stamp."""
    stamps = keras.Input(geometry.shape, name="stamps")
    x = SelectChannels(channels, name="channels")(stamps)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    probabilities = layers.Dense(len(geometry.classes), activation="softmax",
                                 name="probabilities")(x)
    return keras.Model(stamps, probabilities, name=name)


def build_deephits(geometry: StampGeometry, channels, *, filters=32, dense=64, dropout=0.5,
                   leaky_slope=0.01, name="deephits") -> keras.Model:
    """A Deep-HiTS-class net: conv 32@4x4, conv 32@3x3, max-pool, three conv 64@3x3,
    max-pool, dense 64, dense 64 + dropout 0.5, softmax 2, leaky ReLU; the four 90-degree
    rotations share the conv tower and are averaged before the dense layers, so the
    output is invariant to rotating the stamp. About 210k parameters."""

    def conv(x, width, size, label):
        x = layers.Conv2D(width, size, padding="same", name=label)(x)
        return layers.LeakyReLU(negative_slope=leaky_slope, name=f"{label}_act")(x)

    stamps = keras.Input(geometry.shape, name="stamps")
    x = SelectChannels(channels, name="channels")(stamps)
    x = RotationStack(name="rotations")(x)
    x = conv(x, filters, 4, "conv1")
    x = conv(x, filters, 3, "conv2")
    x = layers.MaxPooling2D(2, name="pool1")(x)
    for i in (3, 4, 5):
        x = conv(x, 2 * filters, 3, f"conv{i}")
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = RotationPool(name="rotation_pool")(x)
    x = layers.Dense(dense, name="dense1")(x)
    x = layers.LeakyReLU(negative_slope=leaky_slope, name="dense1_act")(x)
    x = layers.Dense(dense, name="dense2")(x)
    x = layers.LeakyReLU(negative_slope=leaky_slope, name="dense2_act")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    probabilities = layers.Dense(len(geometry.classes), activation="softmax",
                                 name="probabilities")(x)
    return keras.Model(stamps, probabilities, name=name)


BUILDERS = {"seed": build_seed, "deephits": build_deephits}


def build_classifier(arch: str, channels, geometry: StampGeometry = HITS,
                     **hparams) -> keras.Model:
    """The ``arch`` builder for stamps of ``geometry``, seeing ``channels`` (names or
    indices of the geometry's channels), with its hyperparameters."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown classifier arch {arch!r}; choose one of {sorted(BUILDERS)}")
    try:
        indices = geometry.channel_indices(channels)
    except ValueError as err:
        raise ValueError(f"classifier channels must be distinct channels of the stamps "
                         f"({err})") from None
    return BUILDERS[arch](geometry, indices, **hparams)


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """``sgd`` (the study's), ``adam`` or ``rmsprop`` at ``learning_rate``."""
    optimizers = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
                  "rmsprop": keras.optimizers.RMSprop}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(optimizers)}")
    return optimizers[name](learning_rate=learning_rate)


def compile_classifier(model: keras.Model, optimizer: str, learning_rate: float) -> keras.Model:
    model.compile(optimizer=make_optimizer(optimizer, learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def quarter_turn_invariant(model: keras.Model, stamps, *, atol: float = 1e-5) -> bool:
    """Whether ``model``'s probabilities on ``stamps`` (N, H, W, C) stay within ``atol``
    when the stamps are turned by 90, 180 or 270 degrees (measured, not assumed: the
    deephits net is invariant by construction, the seed net is not)."""
    import numpy as np

    stamps = np.asarray(stamps, np.float32)
    base = model.predict(stamps, verbose=0)
    for k in (1, 2, 3):
        turned = model.predict(np.ascontiguousarray(np.rot90(stamps, k, axes=(1, 2))), verbose=0)
        if np.abs(turned - base).max() > atol:
            return False
    return True


def seen_channels_predict_fn(model: keras.Model):
    """(predict_fn, channels) for the occlusion engine: a traceable function of the
    channels the classifier sees, (B, H, W, len(channels)) -> (B, K), and those channels.

    A model that starts with ``SelectChannels`` is cut after it, so occluded copies need
    only its channels (4x less copying for the SNR-only seed net); any other model gets
    all channels: (model, None).
    """
    try:
        select = model.get_layer("channels")
    except ValueError:
        select = None
    if not isinstance(select, SelectChannels):
        return (lambda stamps: model(stamps, training=False)), None
    tail = keras.Model(select.output, model.output, name=f"{model.name}_seen_channels")
    return (lambda stamps: tail(stamps, training=False)), select.channels

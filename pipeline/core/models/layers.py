"""Small Keras layers the project's models share (registered, so saved models reload).

Loading a saved model that uses them needs this module imported first; importing
``pipeline.core.models`` does that.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pipeline")
class SelectChannels(keras.layers.Layer):
    """(B, H, W, C) stamps -> (B, H, W, len(channels)): the channels a model sees.

    Keeping the selection inside the model lets every saved model take the full
    four-channel stamp, so callers never need to know which channels a model uses.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = tuple(int(c) for c in channels)

    def call(self, inputs):
        return ops.take(inputs, list(self.channels), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.channels))

    def get_config(self):
        return {**super().get_config(), "channels": list(self.channels)}


def rotate90(images):
    """Rotate (B, H, W, C) images by 90 degrees counter-clockwise (H == W)."""
    return ops.flip(ops.transpose(images, (0, 2, 1, 3)), axis=1)


@keras.saving.register_keras_serializable(package="pipeline")
class RotationStack(keras.layers.Layer):
    """(B, H, W, C) -> (4B, H, W, C): the four 90-degree rotations, stacked on the batch
    axis (all of rotation 0 first), so one conv tower sees each rotation with the same
    weights (Deep-HiTS's cyclic slicing)."""

    def call(self, inputs):
        rotations = [inputs]
        for _ in range(3):
            rotations.append(rotate90(rotations[-1]))
        return ops.concatenate(rotations, axis=0)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else 4 * input_shape[0]
        return (batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package="pipeline")
class RotationPool(keras.layers.Layer):
    """(4B, F) -> (B, F): the mean over the four rotations of each stamp. The mean of the
    same four feature vectors in any order is the same, so the model is exactly invariant
    to 90-degree rotations of its input (up to float rounding)."""

    def call(self, inputs):
        features = ops.shape(inputs)[-1]
        return ops.mean(ops.reshape(inputs, (4, -1, features)), axis=0)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // 4
        return (batch, *input_shape[1:])

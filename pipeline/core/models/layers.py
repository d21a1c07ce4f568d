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



@keras.saving.register_keras_serializable(package="pipeline")
class AlignRotations(keras.layers.Layer):
    """(4B, h, w, c) feature maps of ``RotationStack``'s four rotations -> (B, h, w, 4c):
    rotation k's maps turned back by k quarter turns, so every channel is in the stamp's
    own frame, and the four rotations side by side on the channel axis (rotation 0 first).

    A conv tower applied to a rotated stamp computes the features of rotated filters;
    turned back, they are four filter banks on the same pixels. On an odd-sized stamp a
    2x2 pooling drops a different border row per rotation, so cells align to within half
    a cell.
    """

    def call(self, inputs):
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        stacked = ops.reshape(inputs, (4, -1, height, width, channels))
        aligned = []
        for k in range(4):
            maps = stacked[k]
            for _ in range((4 - k) % 4):  # k turns back = 4 - k turns forward
                maps = rotate90(maps)
            aligned.append(maps)
        return ops.concatenate(aligned, axis=-1)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // 4
        return (batch, *input_shape[1:3], 4 * input_shape[3])


def turn_back(images, turns: int):
    """(B, H, W, C) images turned back (clockwise) by ``turns`` quarter turns (H == W):
    the inverse of ``turns`` applications of ``rotate90``, in one or two copies."""
    turns %= 4
    if turns == 0:
        return images
    if turns == 2:
        return ops.flip(images, axis=(1, 2))
    if turns == 3:
        return rotate90(images)
    return ops.flip(ops.transpose(images, (0, 2, 1, 3)), axis=2)


@keras.saving.register_keras_serializable(package="pipeline")
class AlignedPointwise(keras.layers.Layer):
    """(4B, h, w, c) feature maps of ``RotationStack``'s four rotations -> (B, h, w, filters):
    exactly a 1x1 convolution (kernel (1, 1, 4c, filters), bias, activation) applied to
    ``AlignRotations``' output, without building that (B, h, w, 4c) tensor.

    A 1x1 convolution commutes with quarter turns, so each rotation's c channels are first
    reduced to ``filters`` with its own slice of the kernel (one batched matmul), and only
    those smaller maps are turned back and summed. A deep net's taps (deephits: 4 x 64
    channels on 10x10) then cross memory once instead of being copied by every rotation,
    the flattening into the condition vector and the split out of it.
    """

    def __init__(self, filters: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernel = self.add_weight(shape=(4, channels, self.filters), name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

    @classmethod
    def from_conv(cls, conv: keras.layers.Conv2D, name: str) -> AlignedPointwise:
        """The layer computing ``conv`` (a 1x1 Conv2D on ``AlignRotations``' 4c channels),
        its weights copied (kernel (1, 1, 4c, f) -> (4, c, f): rotation 0's rows first)."""
        kernel, bias = conv.get_weights()
        if kernel.shape[:2] != (1, 1) or kernel.shape[2] % 4:
            raise ValueError(f"layer {conv.name!r} is not a 1x1 convolution of four "
                             f"rotations' channels (kernel {kernel.shape})")
        layer = cls(kernel.shape[3], keras.activations.serialize(conv.activation), name=name)
        layer.build((None, 1, 1, kernel.shape[2] // 4))
        layer.set_weights([kernel.reshape(4, kernel.shape[2] // 4, kernel.shape[3]), bias])
        return layer

    def call(self, inputs):
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        reduced = ops.matmul(ops.reshape(inputs, (4, -1, channels)), self.kernel)
        reduced = ops.reshape(reduced, (4, -1, height, width, self.filters))
        total = reduced[0]
        for k in (1, 2, 3):
            total = total + turn_back(reduced[k], k)
        return self.activation(total + self.bias)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // 4
        return (batch, *input_shape[1:3], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "activation": keras.activations.serialize(self.activation)}


# Softmax margins beyond this many nats are all "saturated": their maps are ~0 anyway.
MARGIN_CAP = 30.0
MARGIN_SCALE = 10.0  # the margin is passed on divided by this, to lie in [0, 3]


@keras.saving.register_keras_serializable(package="pipeline")
class ClassCondition(keras.layers.Layer):
    """(B, K) class probabilities -> (B, K) one-hot predicted class, or with
    ``margin=True`` (B, K + 1): the one-hot class and the predicted class's log-odds
    margin over the runner-up, log p_max - log p_2nd, clipped to [0, MARGIN_CAP] and
    divided by 10 (so in [0, 3]).

    The margin tells an estimator how saturated the softmax is, which sets how large the
    map's drops can be: a patch moves a probability of 0.9999 much less than one of 0.6.
    """

    def __init__(self, margin: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.margin = bool(margin)

    def call(self, probabilities):
        n_classes = ops.shape(probabilities)[-1]
        one_hot = ops.one_hot(ops.argmax(probabilities, axis=-1), n_classes,
                              dtype=probabilities.dtype)
        if not self.margin:
            return one_hot
        top2 = ops.top_k(probabilities, 2)[0]
        log_top2 = ops.log(ops.maximum(top2, 1e-37))
        margin = ops.clip(log_top2[:, :1] - log_top2[:, 1:], 0.0, MARGIN_CAP) / MARGIN_SCALE
        return ops.concatenate([one_hot, margin], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + int(self.margin))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="pipeline")
class TileCondition(keras.layers.Layer):
    """(B, D) condition vector -> (B, height, width, D) planes, to concatenate with
    feature maps of that size."""

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, condition):
        planes = ops.expand_dims(ops.expand_dims(condition, 1), 1)
        return ops.tile(planes, (1, self.height, self.width, 1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package="pipeline")
class Headroom(keras.layers.Layer):
    """[positive (B, H, W) in [0, 1], negative (B, H, W) in [0, 1], condition (B, D)] ->
    map = positive * p - negative * (1 - p) (B, H, W), in [-(1 - p), p].

    p is the explained (predicted) class's probability, recovered exactly from the scaled
    log-odds margin that ``ClassCondition(margin=True)`` puts in column ``margin_index``
    (two classes: p = sigmoid(margin)). A mean-reduced occlusion map of the predicted class
    lies in exactly that interval: hiding a patch can lower p at most to 0 and raise it at
    most to 1. So the heads learn FRACTIONS of the possible drop, which do not depend on how
    saturated the softmax is; the saturation, which sets the map's amplitude over orders of
    magnitude, is applied exactly instead of being learned.
    """

    def __init__(self, margin_index: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.margin_index = int(margin_index)

    def call(self, inputs):
        positive, negative, condition = inputs
        margin = condition[:, self.margin_index] * MARGIN_SCALE
        p = ops.sigmoid(margin)[:, None, None]
        return positive * p - negative * (1.0 - p)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "margin_index": self.margin_index}



@keras.saving.register_keras_serializable(package="pipeline")
class SplitCondition(keras.layers.Layer):
    """(B, V + h*w*c) ``taps`` condition -> [vector (B, V), taps (B, h, w, c)]: the
    flattened spatial activations at its end back in their grid."""

    def __init__(self, tap_shape, **kwargs):
        super().__init__(**kwargs)
        self.tap_shape = tuple(int(size) for size in tap_shape)

    def _tap_size(self):
        return self.tap_shape[0] * self.tap_shape[1] * self.tap_shape[2]

    def call(self, condition):
        vector_size = condition.shape[-1] - self._tap_size()
        taps = ops.reshape(condition[:, vector_size:], (-1, *self.tap_shape))
        return condition[:, :vector_size], taps

    def compute_output_shape(self, input_shape):
        return ((input_shape[0], input_shape[-1] - self._tap_size()),
                (input_shape[0], *self.tap_shape))

    def get_config(self):
        return {**super().get_config(), "tap_shape": list(self.tap_shape)}


@keras.saving.register_keras_serializable(package="pipeline")
class ExplainedClass(keras.layers.Layer):
    """(B, K) class probabilities -> [target (B,) int32, the predicted class the maps
    explain; base_prob (B,) float32 in [0, 1], its probability]: what the exact engine
    records beside each map, here from the explainer's own classifier pass."""

    def call(self, probabilities):
        target = ops.argmax(probabilities, axis=-1)
        base_prob = ops.max(probabilities, axis=-1)
        return ops.cast(target, "int32"), base_prob

    def compute_output_shape(self, input_shape):
        return (input_shape[0],), (input_shape[0],)


@keras.saving.register_keras_serializable(package="pipeline")
class MapSummary(keras.layers.Layer):
    """(B, H, W) maps -> (B, 4) numbers that say how a map looks: log10 of its largest
    |value| (floored at 1e-4), the shares of that amplitude its largest positive and
    largest negative values make up (in [0, 1]), and its concentration, sum |m| / (H W
    max |m|) in [0, 1] (a single peak: near 0; spread evenly: 1).

    An error head reads these because estimator errors go with amplitude (small maps are
    relatively the hardest) and with mixed signs (evidence for and against the class)."""

    FLOOR = 1e-4

    def call(self, maps):
        flat = ops.reshape(maps, (ops.shape(maps)[0], -1))
        amplitude = ops.maximum(ops.max(ops.abs(flat), axis=-1), self.FLOOR)
        positive = ops.maximum(ops.max(flat, axis=-1), 0.0) / amplitude
        negative = ops.maximum(-ops.min(flat, axis=-1), 0.0) / amplitude
        spread = ops.mean(ops.abs(flat), axis=-1) / amplitude
        log_amplitude = ops.log(amplitude) / ops.log(10.0)
        return ops.stack([log_amplitude, positive, negative, spread], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4)


@keras.saving.register_keras_serializable(package="pipeline")
class Doubt(keras.layers.Layer):
    """(B, 1) raw score s -> doubt (B,) = min(max(s, 0)^2, 2): the head's estimate of
    1 - r, the error of the estimated map against the exact one (r its Pearson r), in
    [0, 2]; 0, the least doubt, says "this map is exact". The head is trained on the
    square root of the error (``doubt.doubt_target``), which spreads the small errors
    that most maps have; squaring brings it back to the error's own scale."""

    def call(self, score):
        return ops.minimum(ops.square(ops.maximum(score[:, 0], 0.0)), 2.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

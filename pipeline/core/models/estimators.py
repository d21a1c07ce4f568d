"""One-pass occlusion-map estimators: predict the exact map of a stamp in one forward pass.

An estimator is a ``keras.Model`` with two inputs, the stamps (B, H, W, C) float32 in
[0, 1] (it selects the classifier's channels itself) and a condition vector (B, D) that
comes from one pass of the classifier (see ``condition_model``), and one output, the raw
map (B, H, W) in [-1, 1]. The stamp geometry is the classifier's input shape (21x21x4 for
HiTS, which the sizes quoted below assume); decoders compute their grids from it.
``explainer`` joins classifier and estimator into one model stamps -> map, which is what
is saved, registered and served.

Variants (``ESTIMATORS``):

- ``seed_ae``: the original study's best model. An encoder mirroring the classifier's conv
  layers up to its first pooling (weights copied from the trained classifier, frozen), a
  dense bottleneck with the condition concatenated, and a decoder back to H x W through
  one transposed convolution at half size (11x11 -> 22x22, cropped to 21x21).
- ``unet``: a small U-Net (padded to a multiple of 4: 21x21 -> 24x24, two poolings, skip
  connections) with the
  condition tiled onto the bottleneck. Full resolution: slower.
- ``gated_ae``: aimed at the bogus class. The seed_ae trunk, conditioned also on the
  softmax margin and the classifier's penultimate features; the decoder predicts the
  map's SHAPE (tanh, [-1, 1]) and a separate head its AMPLITUDE (sigmoid, [0, 1]) from
  the condition and the bottleneck; map = amplitude x shape. Bogus maps span orders of
  magnitude in amplitude (a saturated softmax hardly moves), which one decoder fitting
  raw values learns badly; with the amplitude split off, the shape is learned at unit
  scale. Trained with ``relative_map_loss`` so small maps count.
- ``headroom_ae``: also aimed at the bogus class, where ``gated_ae`` fails on a deep CNN:
  its amplitude head collapses to zero for the predicted-bogus stamps, because most of
  them have trivial maps (a saturated softmax) and it cannot learn WHICH do not. Here two
  sigmoid decoders predict the fraction of the largest possible drop and rise of p at
  each pixel, and the ``Headroom`` layer scales them by the exact bounds the classifier's own
  probability p sets: map = positive x p - negative x (1 - p). Needs the margin in the
  condition (``margin`` or ``features``).
- ``tap_ae``: no encoder of its own. It reads the classifier's last spatial activations
  (the input of its last pooling; a rotation-stacked net's four rotations turned back into
  the stamp's frame, ``AlignRotations``), which the classifier pass computes anyway, and
  decodes them with a few small convolutions, the stamp's channels joined in at full
  resolution, into the same drop/rise shares as ``headroom_ae``. Condition ``taps``. The
  map is decided by what the classifier computes at each place; here the estimator sees
  exactly that. For a deep classifier it is the most faithful (the bogus class included),
  with a tenth of ``headroom_ae``'s parameters; on the seed net, whose one conv layer is
  all there is to tap, it decodes at full resolution and is slower and less faithful.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.core.models.imported import is_opaque
from pipeline.core.models.layers import (
    AlignedPointwise,
    AlignRotations,
    ClassCondition,
    ExplainedClass,
    Headroom,
    RotationStack,
    SelectChannels,
    SplitCondition,
    TileCondition,
)

CONDITIONS = ("class", "margin", "features", "taps")
SHARE_BIAS = -4.0


def condition_model(classifier: keras.Model, condition: str = "class") -> keras.Model:
    """stamps (B, H, W, C) -> condition (B, D), from the classifier (frozen, inference).

    ``class``: one-hot predicted class (D = 2); ``margin``: plus the scaled log-odds
    margin (D = 3, see ``ClassCondition``); ``features``: plus the classifier's
    penultimate activations (the input of its ``probabilities`` layer); ``taps``: plus,
    flattened, its last spatial activations (``tap_shape``; D = 3 + features + h*w*c).
    """
    stamps = keras.Input(input_stamp_shape(classifier), name="stamps")
    _, vector = _condition_parts(classifier, condition, stamps)
    return keras.Model(stamps, vector, name="condition_model")


def _condition_parts(classifier: keras.Model, condition: str, stamps):
    """(probabilities (B, K), condition vector (B, D)) of the ``stamps`` tensor from one
    pass of ``classifier`` (frozen, inference), as ``condition_model`` describes."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if condition in ("features", "taps") and is_opaque(classifier):
        raise ValueError(f"estimator.condition {condition!r} reads the classifier's inner "
                         "layers, and this classifier is an imported SavedModel (an opaque "
                         "graph): use estimator.condition class or margin")
    classifier.trainable = False
    if condition in ("features", "taps"):
        outputs = [classifier.output, classifier.get_layer("probabilities").input]
        if condition == "taps":
            outputs.append(_tap_tensor(classifier))
        tapped = keras.Model(classifier.input, outputs, name=f"{classifier.name}_tapped")
        probabilities, features, *taps = tapped(stamps, training=False)
        parts = [ClassCondition(margin=True, name="class_margin")(probabilities), features]
        if taps:
            spatial = taps[0]
            if _rotation_stacked(classifier):
                spatial = AlignRotations(name="aligned_taps")(spatial)
            parts.append(layers.Flatten(name="flat_taps")(spatial))
        return probabilities, layers.Concatenate(name="condition")(parts)
    probabilities = classifier(stamps, training=False)
    return probabilities, ClassCondition(margin=condition == "margin",
                                         name="condition")(probabilities)


def input_stamp_shape(classifier: keras.Model) -> tuple[int, int, int]:
    """(H, W, C): the stamps ``classifier`` takes, from its input."""
    return tuple(int(size) for size in classifier.input.shape[1:])


def _tap_tensor(classifier: keras.Model):
    """The classifier's last spatial activations: the input of its last pooling layer."""
    pools = [layer for layer in classifier.layers if isinstance(layer, layers.MaxPooling2D)]
    if not pools:
        raise ValueError(f"classifier {classifier.name!r} has no pooling layer whose input "
                         "could be tapped")
    return pools[-1].input


def _rotation_stacked(classifier: keras.Model) -> bool:
    return any(isinstance(layer, RotationStack) for layer in classifier.layers)


def tap_shape(classifier: keras.Model) -> tuple[int, int, int]:
    """(h, w, c) of the tapped activations in the ``taps`` condition: the seed net's conv
    output (21, 21, 8); deephits' last conv (10, 10, 64) x 4 rotations -> (10, 10, 256)."""
    _, height, width, channels = _tap_tensor(classifier).shape
    return int(height), int(width), int(channels) * (4 if _rotation_stacked(classifier) else 1)


# The encoder of an estimator whose classifier has no conv layer to mirror (an imported
# SavedModel): the seed net's conv, learnt from scratch (no layer of this name to copy).
DEFAULT_SPEC = ({"name": "conv", "filters": 8, "kernel_size": (3, 3), "activation": "relu",
                 "slope": None},)


def mirror_spec(classifier: keras.Model) -> list[dict]:
    """The classifier's conv layers up to its first pooling, as
    [{name, filters, kernel_size, activation, slope}] (slope: a LeakyReLU's, or None);
    ``DEFAULT_SPEC`` for an opaque classifier (an imported SavedModel)."""
    if is_opaque(classifier):
        return [dict(conv) for conv in DEFAULT_SPEC]
    spec: list[dict] = []
    model_layers = classifier.layers
    for index, layer in enumerate(model_layers):
        if isinstance(layer, layers.MaxPooling2D):
            break
        if isinstance(layer, layers.Conv2D):
            follower = model_layers[index + 1] if index + 1 < len(model_layers) else None
            slope = (float(follower.negative_slope)
                     if isinstance(follower, layers.LeakyReLU) else None)
            spec.append({"name": layer.name, "filters": layer.filters,
                         "kernel_size": tuple(layer.kernel_size),
                         "activation": keras.activations.serialize(layer.activation),
                         "slope": slope})
    if not spec:
        raise ValueError(f"classifier {classifier.name!r} has no conv layer before its "
                         "first pooling to mirror")
    return spec


def _encoder(x, spec: list[dict]):
    """The mirrored conv layers (named ``enc_<classifier layer>``) and a 2x2 pooling."""
    for conv in spec:
        x = layers.Conv2D(conv["filters"], conv["kernel_size"], padding="same",
                          activation=conv["activation"], name=f"enc_{conv['name']}")(x)
        if conv["slope"] is not None:
            x = layers.LeakyReLU(negative_slope=conv["slope"], name=f"enc_{conv['name']}_act")(x)
    return layers.MaxPooling2D(2, name="enc_pool")(x)  # 21 -> 10


def _decoder(x, map_shape: tuple[int, int], filters: int, activation: str, name: str,
             out_bias: float = 0.0):
    """Dense code -> (B, H, W) through maps of half the size, rounded up (11x11 for 21x21),
    one transposed convolution (22x22) and a crop of the extra row and column;
    ``out_bias`` initialises the last layer's bias (where the output starts)."""
    height, width = map_shape
    half = (-(-height // 2), -(-width // 2))
    x = layers.Dense(half[0] * half[1] * filters, activation="relu", name=f"{name}_dense")(x)
    x = layers.Reshape((*half, filters), name=f"{name}_grid")(x)
    x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu",
                               name=f"{name}_up")(x)
    x = layers.Cropping2D(((0, 2 * half[0] - height), (0, 2 * half[1] - width)),
                          name=f"{name}_crop")(x)
    x = layers.Conv2D(1, 3, padding="same", activation=activation, name=f"{name}_out",
                      bias_initializer=keras.initializers.Constant(out_bias))(x)
    return layers.Reshape(map_shape, name=f"{name}_map")(x)


def _conditioned_trunk(stamp_shape, channels, condition_dim: int, spec: list[dict],
                       bottleneck: int):
    """The autoencoders' shared front: inputs (stamps, condition) and the dense code
    (B, bottleneck) of the mirrored encoder's bottleneck with the condition joined in."""
    stamps = keras.Input(stamp_shape, name="stamps")
    condition = keras.Input((condition_dim,), name="condition")
    x = SelectChannels(channels, name="channels")(stamps)
    x = layers.Flatten(name="enc_flatten")(_encoder(x, spec))
    x = layers.Dense(bottleneck, activation="relu", name="bottleneck")(x)
    x = layers.Concatenate(name="conditioned")([x, condition])
    code = layers.Dense(bottleneck, activation="relu", name="code")(x)
    return stamps, condition, code


def build_seed_ae(stamp_shape, channels, condition_dim: int, spec: list[dict], *,
                  bottleneck: int = 64, decoder_filters: int = 8,
                  name: str = "seed_ae") -> keras.Model:
    """[stamps (B,H,W,C), condition (B,D)] -> map (B,H,W) in [-1, 1]."""
    stamps, condition, code = _conditioned_trunk(stamp_shape, channels, condition_dim, spec,
                                                 bottleneck)
    maps = _decoder(code, stamp_shape[:2], decoder_filters, "tanh", "dec")
    return keras.Model([stamps, condition], maps, name=name)


def build_gated_ae(stamp_shape, channels, condition_dim: int, spec: list[dict], *,
                   bottleneck: int = 64, decoder_filters: int = 8,
                   name: str = "gated_ae") -> keras.Model:
    """[stamps (B,H,W,C), condition (B,D)] -> amplitude (B,1,1) x shape (B,H,W)."""
    stamps, condition, code = _conditioned_trunk(stamp_shape, channels, condition_dim, spec,
                                                 bottleneck)
    shape = _decoder(code, stamp_shape[:2], decoder_filters, "tanh", "shape")
    gate = layers.Dense(bottleneck // 2, activation="relu", name="amplitude_hidden")(
        layers.Concatenate(name="amplitude_in")([code, condition]))
    amplitude = layers.Dense(1, activation="sigmoid", name="amplitude")(gate)
    amplitude = layers.Reshape((1, 1), name="amplitude_grid")(amplitude)
    maps = layers.Multiply(name="map")([shape, amplitude])
    return keras.Model([stamps, condition], maps, name=name)


def build_headroom_ae(stamp_shape, channels, condition_dim: int, spec: list[dict], *,
                      bottleneck: int = 64, decoder_filters: int = 8,
                      name: str = "headroom_ae") -> keras.Model:
    """[stamps (B,H,W,C), condition (B,D >= 3, column 2 the scaled margin)] ->
    positive (B,H,W) x p - negative (B,H,W) x (1 - p), in [-(1 - p), p]."""
    if condition_dim < 3:
        raise ValueError("headroom_ae needs the softmax margin in its condition "
                         "(estimator.condition margin or features), got a condition of "
                         f"{condition_dim} values")
    stamps, condition, code = _conditioned_trunk(stamp_shape, channels, condition_dim, spec,
                                                 bottleneck)
    # Shares start near 0 (sigmoid(-4) = 0.018), as most maps are: from 0.5 the map would
    # start at p - 0.5 everywhere and take many epochs to come down.
    map_shape = stamp_shape[:2]
    positive = _decoder(code, map_shape, decoder_filters, "sigmoid", "drop",
                        SHARE_BIAS)  # of p, removed
    negative = _decoder(code, map_shape, decoder_filters, "sigmoid", "rise",
                        SHARE_BIAS)  # of 1 - p, added
    maps = Headroom(margin_index=2, name="map")([positive, negative, condition])
    return keras.Model([stamps, condition], maps, name=name)


def build_tap_ae(stamp_shape, channels, condition_dim: int, spec: list[dict] | None = None,
                 *, tap_shape: tuple[int, int, int], width: int = 32, condition_width: int = 16,
                 detail_filters: int = 16, name: str = "tap_ae") -> keras.Model:
    """[stamps (B,H,W,C), condition (B, 3 + F + h*w*c): ``taps`` of a classifier whose
    tapped activations are ``tap_shape`` (h, w, c)] -> drop x p - rise x (1 - p)
    (B,H,W), in [-(1 - p), p] as in ``headroom_ae``.

    Trained on the flat condition (what the training sets store); ``explainer`` hands the
    same layers the tapped tensor directly (``_fused_tap_parts``)."""
    tap_size = tap_shape[0] * tap_shape[1] * tap_shape[2]
    if condition_dim < 3 + tap_size:
        raise ValueError(f"tap_ae needs the taps condition ({3 + tap_size}+ values for taps "
                         f"of shape {tuple(tap_shape)}), got a condition of {condition_dim}")
    map_shape = tuple(stamp_shape[:2])
    stamps = keras.Input(stamp_shape, name="stamps")
    condition = keras.Input((condition_dim,), name="condition")
    vector, taps = SplitCondition(tap_shape, name="split_condition")(condition)
    context = layers.Dense(condition_width, activation="relu", name="context")
    context.build(vector.shape)  # before tap_reduce: the order a seed draws weights in
    reduced = layers.Conv2D(width, 1, activation="relu", name="tap_reduce")(taps)
    head = {
        "context": context,
        "tile": TileCondition(*tap_shape[:2], name="tile"),
        "tap_context": layers.Concatenate(name="tap_context"),
        **{f"tap_conv{i}": layers.Conv2D(width, 3, padding="same", activation="relu",
                                         name=f"tap_conv{i}") for i in (1, 2)},
        "channels": SelectChannels(channels, name="channels"),
        "with_stamp": layers.Concatenate(name="with_stamp"),
        "detail": layers.Conv2D(detail_filters, 3, padding="same", activation="relu",
                                name="detail"),
        "map": Headroom(margin_index=2, name="map"),
    }
    if tuple(tap_shape[:2]) != map_shape:
        head["to_stamp_grid"] = layers.Resizing(*map_shape, interpolation="bilinear",
                                                name="to_stamp_grid")
    for label in ("drop", "rise"):  # of p removed, of 1 - p added; start near 0 as most maps
        head[f"{label}_out"] = layers.Conv2D(
            1, 3, padding="same", activation="sigmoid", name=f"{label}_out",
            bias_initializer=keras.initializers.Constant(SHARE_BIAS))
        head[f"{label}_map"] = layers.Reshape(map_shape, name=f"{label}_map")
    maps = _tap_decode(head, stamps, vector, reduced)
    return keras.Model([stamps, condition], maps, name=name)


TAP_HEAD = ("context", "tile", "tap_context", "tap_conv1", "tap_conv2", "to_stamp_grid",
            "channels", "with_stamp", "detail", "drop_out", "rise_out", "drop_map",
            "rise_map", "map")


def _tap_decode(head: dict, stamps, vector, reduced):
    """``tap_ae``'s decoder: stamps (B,H,W,C), vector (B, 3 + F: class, margin, features)
    and the reduced taps (B, h, w, width) -> map (B,H,W), through the layers in ``head``
    (named as in ``TAP_HEAD``; ``to_stamp_grid`` only where h x w is not H x W)."""
    context = head["context"](vector)
    x = head["tap_context"]([reduced, head["tile"](context)])
    for i in (1, 2):
        x = head[f"tap_conv{i}"](x)
    if "to_stamp_grid" in head:
        x = head["to_stamp_grid"](x)
    x = head["detail"](head["with_stamp"]([x, head["channels"](stamps)]))
    shares = [head[f"{label}_map"](head[f"{label}_out"](x)) for label in ("drop", "rise")]
    return head["map"]([*shares, vector])  # column 2 of the vector: the scaled margin


def build_unet(stamp_shape, channels, condition_dim: int, spec: list[dict] | None = None, *,
               base_filters: int = 16, name: str = "unet") -> keras.Model:
    """[stamps (B,H,W,C), condition (B,D)] -> map (B,H,W) in [-1, 1]."""

    def block(x, filters, label):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                              name=f"{label}_conv{i}")(x)
        return x

    # Two 2x2 poolings need sides divisible by 4: pad (21 -> 24: 1 before, 2 after), crop
    # the same off the output.
    height, width = stamp_shape[:2]
    pads = tuple((extra // 2, extra - extra // 2) for extra in ((-height) % 4, (-width) % 4))
    stamps = keras.Input(stamp_shape, name="stamps")
    condition = keras.Input((condition_dim,), name="condition")
    x = SelectChannels(channels, name="channels")(stamps)
    x = layers.ZeroPadding2D(pads, name="pad")(x)
    skip1 = block(x, base_filters, "down1")
    skip2 = block(layers.MaxPooling2D(2, name="pool1")(skip1), 2 * base_filters, "down2")
    x = layers.MaxPooling2D(2, name="pool2")(skip2)  # 6x6 on 21x21
    bottom = ((height + sum(pads[0])) // 4, (width + sum(pads[1])) // 4)
    x = layers.Concatenate(name="conditioned")([x, TileCondition(*bottom, name="tile")(condition)])
    x = block(x, 4 * base_filters, "middle")
    x = layers.Conv2DTranspose(2 * base_filters, 2, strides=2, name="up2")(x)
    x = block(layers.Concatenate(name="skip2")([x, skip2]), 2 * base_filters, "dec2")
    x = layers.Conv2DTranspose(base_filters, 2, strides=2, name="up1")(x)
    x = block(layers.Concatenate(name="skip1")([x, skip1]), base_filters, "dec1")
    x = layers.Conv2D(1, 1, activation="tanh", name="out")(x)
    x = layers.Cropping2D(pads, name="crop")(x)
    maps = layers.Reshape((height, width), name="map")(x)
    return keras.Model([stamps, condition], maps, name=name)


ESTIMATORS = {"seed_ae": build_seed_ae, "unet": build_unet, "gated_ae": build_gated_ae,
              "headroom_ae": build_headroom_ae, "tap_ae": build_tap_ae}
MIRRORING = ("seed_ae", "gated_ae", "headroom_ae")  # start from the classifier's conv weights


def build_estimator(arch: str, classifier: keras.Model, channels, condition_dim: int, *,
                    copy_weights: bool = True, freeze_encoder: bool = True,
                    **hparams) -> keras.Model:
    """The ``arch`` estimator for ``classifier`` (which sees ``channels``), its mirrored
    encoder layers initialised from the classifier's weights and frozen when asked."""
    if arch not in ESTIMATORS:
        raise ValueError(f"unknown estimator arch {arch!r}; choose one of {sorted(ESTIMATORS)}")
    spec = mirror_spec(classifier)
    if arch == "tap_ae":
        hparams = {**hparams, "tap_shape": tap_shape(classifier)}
    model = ESTIMATORS[arch](input_stamp_shape(classifier), tuple(channels), condition_dim, spec,
                             **hparams)
    if arch in MIRRORING and copy_weights:
        copy_encoder_weights(model, classifier, spec, freeze=freeze_encoder)
    return model


def copy_encoder_weights(estimator: keras.Model, classifier: keras.Model, spec: list[dict],
                         *, freeze: bool = True) -> list[str]:
    """Copy each mirrored conv layer's weights from the classifier where the shapes match
    (a deephits classifier's first conv sees 4 channels, so does its mirror); returns the
    names of the copied layers, which are frozen when ``freeze``."""
    copied = []
    for conv in spec:
        if is_opaque(classifier):
            break
        source = classifier.get_layer(conv["name"])
        mirror = estimator.get_layer(f"enc_{conv['name']}")
        weights = source.get_weights()
        if [w.shape for w in weights] == [w.shape for w in mirror.get_weights()]:
            mirror.set_weights(weights)
            mirror.trainable = not freeze
            copied.append(conv["name"])
    return copied


def explainer(classifier: keras.Model, estimator: keras.Model, condition: str) -> keras.Model:
    """stamps (B, H, W, C) -> estimated maps (B, H, W): the classifier pass that
    conditions the estimator and the estimator, in one self-contained model. A ``tap_ae``
    estimator gets the tapped activations inside the graph (``_fused_tap_parts``)."""
    stamps = keras.Input(input_stamp_shape(classifier), name="stamps")
    _, _, maps = _explained_parts(classifier, estimator, condition, stamps)
    return keras.Model(stamps, maps, name=f"{estimator.name}_explainer")


def explainer_with_doubt(classifier: keras.Model, estimator: keras.Model, condition: str,
                         doubt_head: keras.Model | None = None) -> keras.Model:
    """stamps (B, H, W, C) -> {"maps": (B, H, W) in [-1, 1], "target": (B,) int32, the
    explained (predicted) class, "base_prob": (B,) its probability, and with
    ``doubt_head`` (``doubt.doubt_model``, [stamps, condition, maps] -> (B,)) "doubt":
    (B,) in [0, 2]}, all from the one classifier pass of ``explainer``. The head reads the
    condition's leading columns (its own input size: the taps are left out)."""
    stamps = keras.Input(input_stamp_shape(classifier), name="stamps")
    probabilities, vector, maps = _explained_parts(classifier, estimator, condition, stamps)
    target, base_prob = ExplainedClass(name="explained_class")(probabilities)
    outputs = {"maps": maps, "target": target, "base_prob": base_prob}
    if doubt_head is not None:
        size = int(doubt_head.inputs[1].shape[-1])
        if size > vector.shape[-1]:
            raise ValueError(f"the doubt head reads {size} condition values, the explainer "
                             f"has {vector.shape[-1]}")
        head_condition = vector if size == vector.shape[-1] else vector[:, :size]
        outputs["doubt"] = doubt_head([stamps, head_condition, maps])
    return keras.Model(stamps, outputs, name=f"{estimator.name}_explainer")


def _explained_parts(classifier: keras.Model, estimator: keras.Model, condition: str,
                     stamps):
    """(probabilities (B, K), condition vector (B, D), maps (B, H, W)) of the ``stamps``
    tensor; for a ``tap_ae`` under ``taps`` the vector holds no taps (the decoder gets
    them as a tensor)."""
    if condition == "taps" and _is_tap_decoder(estimator):
        return _fused_tap_parts(classifier, estimator, stamps)
    probabilities, vector = _condition_parts(classifier, condition, stamps)
    return probabilities, vector, estimator([stamps, vector])


def _is_tap_decoder(estimator: keras.Model) -> bool:
    names = {layer.name for layer in estimator.layers}
    return {"split_condition", "tap_reduce"} <= names and set(TAP_HEAD) - {"to_stamp_grid"} <= names


def _fused_tap_parts(classifier: keras.Model, estimator: keras.Model, stamps):
    """The ``tap_ae`` explainer with the tapped tensor handed straight to its decoder: the
    same function (the same layers and weights) as condition_model + estimator, without
    flattening the taps (deephits: 25,600 values a stamp) into the condition vector, copying
    them there and splitting them out again. A rotation stack's four rotations are reduced
    by ``AlignedPointwise`` (the estimator's ``tap_reduce`` weights) before they are turned
    back, so only a quarter of the channels are turned. Returns (probabilities, vector
    (class, margin, features), maps)."""
    classifier.trainable = False
    tapped = keras.Model(classifier.input, [classifier.output,
                                            classifier.get_layer("probabilities").input,
                                            _tap_tensor(classifier)],
                         name=f"{classifier.name}_tapped")
    probabilities, features, taps = tapped(stamps, training=False)
    vector = layers.Concatenate(name="condition")(
        [ClassCondition(margin=True, name="class_margin")(probabilities), features])
    tap_reduce = estimator.get_layer("tap_reduce")
    if _rotation_stacked(classifier):
        reduced = AlignedPointwise.from_conv(tap_reduce, name="aligned_tap_reduce")(taps)
    else:
        reduced = tap_reduce(taps)
    names = {layer.name for layer in estimator.layers}
    head = {name: estimator.get_layer(name) for name in TAP_HEAD if name in names}
    return probabilities, vector, _tap_decode(head, stamps, vector, reduced)


@keras.saving.register_keras_serializable(package="pipeline")
class RelativeMapLoss(keras.losses.Loss):
    """Loss on raw maps (B, H, W): MSE plus ``shape_weight`` x the MSE of the error
    divided by the exact map's squared amplitude (max |d|, at least ``floor``).

    Plain MSE is ruled by the few large real-class maps; the relative term gives a map of
    amplitude 0.02 as much say in its shape as one of 0.8, which is what per-map r and
    SSIM on the bogus class ask for. ``floor`` keeps empty maps from being blown up.
    """

    def __init__(self, shape_weight: float = 0.0, floor: float = 0.01, name="relative_map_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.shape_weight = float(shape_weight)
        self.floor = float(floor)

    def call(self, y_true, y_pred):
        mse = ops.mean(ops.square(y_pred - y_true), axis=(1, 2))
        if not self.shape_weight:
            return mse
        scale = ops.maximum(ops.max(ops.abs(y_true), axis=(1, 2)), self.floor)
        return mse + self.shape_weight * mse / ops.square(scale)

    def get_config(self):
        return {**super().get_config(), "shape_weight": self.shape_weight, "floor": self.floor}


def relative_map_loss(shape_weight: float = 0.0, floor: float = 0.01) -> RelativeMapLoss:
    """The estimators' training loss (see ``RelativeMapLoss``)."""
    return RelativeMapLoss(shape_weight, floor)

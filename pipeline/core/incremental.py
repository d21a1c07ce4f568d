"""The incremental exact engine: the same maps as ``OcclusionEngine``, recomputing per patch
only the region of each layer that the patch changes (Krypton, SIGMOD 2019).

Hiding a k x k patch changes a small box of the input. A convolution grows the changed
box by its kernel, a pooling layer maps it onto its grid, pointwise layers (activations,
dropout, batch normalisation at inference) keep it; everything outside the box equals the
unoccluded stamp's activation, which is computed once per stamp and cached. So for each
patch position only a fixed-size WINDOW of each layer (the largest box over positions,
clamped inside the grid) is recomputed, from an input window assembled out of the
previous layer's recomputed window and the cache. The first Dense after ``Flatten`` takes
the change through the changed inputs only: pre = cached pre-activation + (new - old) @
the kernel's rows of those inputs. The layers after it run in full on (positions x
stamps) rows: they are cheap.

Supported chains (anything else is refused with ``NotIncremental`` saying why, and the
caller falls back to the batched engine):

    [SelectChannels] [RotationStack] (Conv2D | MaxPooling2D | AveragePooling2D (valid) |
    ZeroPadding2D | Cropping2D | pointwise)* Flatten [RotationPool] dropout* Dense
    row-wise*

with convolutions and poolings of any kernel and stride, ``same`` or ``valid`` padding,
dilation 1, one group, channels last. Nested models are followed layer by layer. With
``RotationStack`` (the deephits net) each stamp is classified as four turned copies: the
patch of position p is a turned patch in copy r, so every (p, r) pair is recomputed as its
own position and ``RotationPool``'s mean is taken over the pairs of p.

Maps agree with the batched engine to float rounding (<= 1e-5; the window convolutions
add the same products in another order).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from pipeline.core.models.layers import RotationPool, RotationStack, SelectChannels
from pipeline.core.occlusion import OcclusionEngine

# Layers that act on each pixel (or each row) alone, the same way everywhere, at
# inference: they keep the changed region as it is.
POINTWISE = (layers.Activation, layers.ReLU, layers.LeakyReLU, layers.ELU, layers.Softmax,
             layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise,
             layers.GaussianDropout, layers.AlphaDropout, layers.BatchNormalization)
INFERENCE_IDENTITY = (layers.Dropout, layers.GaussianNoise, layers.GaussianDropout,
                      layers.AlphaDropout)

class NotIncremental(ValueError):
    """A model the incremental engine cannot run; the message says which layer and why."""


def layer_chain(model) -> list:
    """The operations of ``model`` from its input to its output, nested models expanded,
    for a model whose graph is one chain (one input, one output, each operation taking
    the previous one's single output). Raises ``NotIncremental`` for any other graph."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotIncremental(f"{model.name} has {len(model.inputs)} inputs and "
                             f"{len(model.outputs)} outputs, not one of each")
    chain, tensor, start = [], model.outputs[0], model.inputs[0]
    while tensor is not start:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            raise NotIncremental(f"{model.name}: a tensor without Keras history")
        operation, node_index = history.operation, history.node_index
        if isinstance(operation, layers.InputLayer):
            raise NotIncremental(f"{model.name}: its graph starts at another input")
        inputs = operation._inbound_nodes[node_index].input_tensors
        if len(inputs) != 1:
            raise NotIncremental(f"layer {operation.name} ({type(operation).__name__}) "
                                 f"takes {len(inputs)} tensors: not a chain")
        if isinstance(operation, keras.Model):
            chain.extend(reversed(layer_chain(operation)))
        else:
            chain.append(operation)
        tensor = inputs[0]
    return chain[::-1]


@dataclass(frozen=True)
class SpatialStep:
    """One layer between the tower's input and ``Flatten``, on one axis pair.

    Output cell y (per axis) reads input cells y * stride - before ... + kernel - 1;
    cells outside the input read ``pad_value``. ``kind``: ``window`` (a conv or a pooling
    recomputed on a window), ``shift`` (zero padding / cropping: a window of the input,
    moved) or ``pointwise`` (applied to the recomputed window as it is).
    """

    layer: object
    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    before: tuple[int, int]
    pad_value: float
    out_shape: tuple[int, int, int]


def _same_before(size: int, kernel: int, stride: int) -> int:
    """TensorFlow's ``same`` padding before the first cell (the smaller half)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2


def _spatial_step(layer, in_shape: tuple[int, int, int]) -> SpatialStep:
    """The ``SpatialStep`` of ``layer`` on input (H, W, C); NotIncremental if unsupported."""
    name = f"layer {layer.name} ({type(layer).__name__})"
    out = tuple(int(s) for s in layer.compute_output_shape((None, *in_shape))[1:])
    if len(out) != 3:
        raise NotIncremental(f"{name} does not give (H, W, C) maps")
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise NotIncremental(f"{name} is channels_first")
    if isinstance(layer, POINTWISE):
        if isinstance(layer, (layers.BatchNormalization, layers.Softmax)) and \
                np.atleast_1d(layer.axis).tolist() not in ([-1], [3]):
            raise NotIncremental(f"{name} works across pixels (axis {layer.axis})")
        return SpatialStep(layer, "pointwise", (1, 1), (1, 1), (0, 0), 0.0, out)
    if isinstance(layer, layers.ZeroPadding2D):
        (top, _), (left, _) = layer.padding
        return SpatialStep(layer, "shift", (1, 1), (1, 1), (top, left), 0.0, out)
    if isinstance(layer, layers.Cropping2D):
        (top, _), (left, _) = layer.cropping
        return SpatialStep(layer, "shift", (1, 1), (1, 1), (-top, -left), 0.0, out)
    if isinstance(layer, layers.Conv2D) and type(layer) is layers.Conv2D:
        if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            raise NotIncremental(f"{name} is dilated or grouped")
        kernel, stride = tuple(layer.kernel_size), tuple(layer.strides)
        pad_value = 0.0
    elif isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
        kernel, stride = tuple(layer.pool_size), tuple(layer.strides)
        if isinstance(layer, layers.AveragePooling2D) and layer.padding == "same":
            # TensorFlow divides by the cells inside the grid only: not a plain window
            raise NotIncremental(f"{name} has same padding")
        pad_value = float(np.finfo(np.float32).min)  # never the maximum
    else:
        raise NotIncremental(f"{name} is not supported")
    if layer.padding == "same":
        before = tuple(_same_before(in_shape[a], kernel[a], stride[a]) for a in (0, 1))
    elif layer.padding == "valid":
        before = (0, 0)
    else:
        raise NotIncremental(f"{name} has padding {layer.padding!r}")
    return SpatialStep(layer, "window", kernel, stride, before, pad_value, out)


@dataclass(frozen=True)
class Chain:
    """A model cut into the parts the incremental engine runs (``plan_chain``)."""

    channels: tuple[int, ...] | None  # what SelectChannels picks, None: all
    rotations: int  # 4 after RotationStack, else 1
    in_shape: tuple[int, int, int]  # the tower's input (H, W, seen channels)
    steps: tuple[SpatialStep, ...]
    dense: object  # the first Dense, after Flatten [and RotationPool]
    tail: tuple  # the row-wise layers after it


def plan_chain(model) -> Chain:
    """``model`` (stamps (B, H, W, C) -> probabilities (B, K)) cut into the parts the
    incremental engine runs; ``NotIncremental`` naming the first layer it cannot run."""
    operations = layer_chain(model)
    shape = tuple(int(s) for s in model.inputs[0].shape[1:])
    if len(shape) != 3:
        raise NotIncremental(f"{model.name} does not take (H, W, C) stamps")
    channels = None
    if operations and isinstance(operations[0], SelectChannels):
        channels = operations.pop(0).channels
        shape = (*shape[:2], len(channels))
    rotations = 1
    if operations and isinstance(operations[0], RotationStack):
        if shape[0] != shape[1]:
            raise NotIncremental("RotationStack on a stamp that is not square")
        operations.pop(0)
        rotations = 4
    steps, current = [], shape
    while operations and not isinstance(operations[0], layers.Flatten):
        step = _spatial_step(operations.pop(0), current)
        steps.append(step)
        current = step.out_shape
    if not operations:
        raise NotIncremental("no Flatten between the maps and the classes")
    flatten = operations.pop(0)
    if getattr(flatten, "data_format", "channels_last") != "channels_last":
        raise NotIncremental(f"layer {flatten.name} (Flatten) is channels_first")
    if rotations == 4:
        if not operations or not isinstance(operations[0], RotationPool):
            raise NotIncremental("RotationStack without RotationPool right after Flatten")
        operations.pop(0)
    while operations and isinstance(operations[0], INFERENCE_IDENTITY):
        operations.pop(0)  # dropout: nothing at inference
    if not operations or not isinstance(operations[0], layers.Dense):
        after = operations[0] if operations else None
        raise NotIncremental("Flatten is not followed by a Dense layer"
                             + (f" but by {after.name} ({type(after).__name__})" if after else ""))
    dense = operations.pop(0)
    from pipeline.core.models.imported import ClassProbabilities

    for layer in operations:
        if not isinstance(layer, (*POINTWISE, layers.Dense, ClassProbabilities)) or \
                isinstance(layer, (layers.SpatialDropout2D,)):
            raise NotIncremental(f"layer {layer.name} ({type(layer).__name__}) after the "
                                 "first Dense is not supported")
    return Chain(channels, rotations, shape, tuple(steps), dense, tuple(operations))


# --- geometry: the changed box of every position, layer by layer (numpy, once) ----------

def _grow(low: np.ndarray, high: np.ndarray, kernel: int, stride: int, before: int,
          size: int) -> tuple[np.ndarray, np.ndarray]:
    """Changed cells [low, high) on an input axis -> on the output axis (empty: 0, 0)."""
    out_low = np.maximum(-(-(low + before - kernel + 1) // stride), 0)
    out_high = np.minimum((high - 1 + before) // stride + 1, size)
    empty = (high <= low) | (out_high <= out_low)
    return np.where(empty, 0, out_low), np.where(empty, 0, out_high)


def _window(low: np.ndarray, high: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Starts (Q,) and the common length of windows holding every box [low, high),
    clamped inside [0, size)."""
    length = max(int((high - low).max()), 1)
    return np.clip(low, 0, size - length), length


@dataclass
class _Assembly:
    """How to build a step's input window per position: (Q, n) flat indices into the
    padded cache and into the previous window, which of the two each cell takes, and the
    cache's padding."""

    cache_index: np.ndarray
    window_index: np.ndarray
    from_window: np.ndarray
    pad: tuple[tuple[int, int], tuple[int, int]]
    shape: tuple[int, int]  # (rows, columns) of the input window


def _assembly(copy: np.ndarray, in_size: tuple[int, int], window_start, window_len,
              out_start, out_len, step: SpatialStep) -> _Assembly:
    axes = []
    for a in (0, 1):
        span = (out_len[a] - 1) * step.stride[a] + step.kernel[a]
        cells = out_start[a][:, None] * step.stride[a] - step.before[a] + np.arange(span)
        pad_low = max(0, -int(cells.min()))
        pad_high = max(0, int(cells.max()) + 1 - in_size[a])
        inside = (cells >= window_start[a][:, None]) & \
                 (cells < window_start[a][:, None] + window_len[a])
        axes.append((cells, pad_low, pad_high, inside, cells - window_start[a][:, None]))
    (rows, top, bottom, in_rows, w_rows), (cols, left, right, in_cols, w_cols) = axes
    padded_h, padded_w = in_size[0] + top + bottom, in_size[1] + left + right
    cache_index = (copy[:, None, None] * padded_h * padded_w
                   + (rows[:, :, None] + top) * padded_w + (cols[:, None, :] + left))
    from_window = in_rows[:, :, None] & in_cols[:, None, :]
    window_index = np.where(from_window, w_rows[:, :, None] * window_len[1] + w_cols[:, None, :], 0)
    q = len(copy)
    return _Assembly(cache_index.reshape(q, -1).astype(np.int32),
                     window_index.reshape(q, -1).astype(np.int32),
                     from_window.reshape(q, -1), ((top, bottom), (left, right)),
                     (rows.shape[1], cols.shape[1]))


class IncrementalOcclusionEngine(OcclusionEngine):
    """Exact occlusion maps of a Keras classifier, recomputing only what each patch
    changes. Same arguments and results as ``OcclusionEngine`` (whose checks, base pass and
    chunking it shares), except that it takes the model: ``NotIncremental`` when the model
    is not a supported chain (see the module docstring)."""

    name = "incremental"

    def __init__(self, model, height: int, width: int, *, patch: int = 3, stride: int = 1,
                 fill: float = 0.0, padding: str = "same", reduce: str = "mean"):
        chain = plan_chain(model)
        if chain.in_shape[:2] != (height, width):
            raise NotIncremental(f"{model.name} takes {chain.in_shape[0]}x"
                                 f"{chain.in_shape[1]} stamps, not {height}x{width}")
        from pipeline.core.models.classifiers import seen_channels_predict_fn

        predict, channels = seen_channels_predict_fn(model)  # the base pass, in full
        if channels != chain.channels:
            raise NotIncremental(f"{model.name}: its SelectChannels is not named 'channels'")
        super().__init__(predict, height, width, patch=patch, stride=stride, fill=fill,
                         padding=padding, reduce=reduce, channels=chain.channels)
        self.chain = chain
        self._plan_geometry(self.masks)

    def _plan_geometry(self, masks: np.ndarray) -> None:
        """Windows and assemblies of every step for the (P, H, W) patch masks."""
        chain, rotations = self.chain, self.chain.rotations
        # position q = p * rotations + r: patch p seen in the copy turned r quarter turns
        turned = np.stack([np.rot90(masks, r, axes=(1, 2)) for r in range(rotations)], 1)
        turned = turned.reshape(-1, *masks.shape[1:]).astype(bool)
        copy = np.tile(np.arange(rotations), len(masks))
        rows, cols = turned.any(axis=2), turned.any(axis=1)
        low = [rows.argmax(1), cols.argmax(1)]
        high = [rows.shape[1] - rows[:, ::-1].argmax(1), cols.shape[1] - cols[:, ::-1].argmax(1)]
        size = chain.in_shape[:2]
        start, length = zip(*(_window(low[a], high[a], size[a]) for a in (0, 1)), strict=True)
        # the input window: the stamp's cells, with the patch's cells hidden
        first = _assembly(copy, size, start, length, start, length,
                          SpatialStep(None, "shift", (1, 1), (1, 1), (0, 0), 0.0, ()))
        hidden = np.stack([turned[q, start[0][q]:start[0][q] + length[0],
                                  start[1][q]:start[1][q] + length[1]]
                           for q in range(len(turned))]).reshape(len(turned), -1)
        self._first_index = tf.constant(first.cache_index)
        self._hidden = tf.constant(hidden[None, :, :, None].astype(np.float32))
        self.queries = len(turned)
        self._first_shape = length
        self._assemblies = []
        self._window_lengths = []  # each window step's output window (rows, columns)
        for step in chain.steps:
            out_size = step.out_shape[:2]
            if step.kind == "pointwise":
                self._assemblies.append(None)
                continue
            new_low, new_high = [], []
            for a in (0, 1):
                lo, hi = _grow(low[a], high[a], step.kernel[a], step.stride[a],
                               step.before[a], out_size[a])
                new_low.append(lo)
                new_high.append(hi)
            out_start, out_length = zip(*(_window(new_low[a], new_high[a], out_size[a])
                                          for a in (0, 1)), strict=True)
            full = (tuple(length) == tuple(size) and tuple(out_length) == tuple(out_size))
            assembly = _assembly(copy, size, start, length, out_start, out_length, step)
            # index into the windows of one stamp, (Q, n_previous) rows
            assembly.window_index = tf.constant(
                assembly.window_index + np.arange(len(copy), dtype=np.int32)[:, None]
                * int(length[0] * length[1]))
            assembly.cache_index = tf.constant(assembly.cache_index)
            assembly.from_window = tf.constant(assembly.from_window)
            self._assemblies.append((assembly, full, tuple(out_length)))
            self._window_lengths.append(tuple(out_length))
            low, high, start, length, size = new_low, new_high, out_start, out_length, out_size
        # the first Dense: its input rows of each position's last window
        last_channels = chain.steps[-1].out_shape[2] if chain.steps else chain.in_shape[2]
        self._last_full = tuple(length) == tuple(size)
        self._last_shape = (*length, last_channels)
        cells = ((start[0][:, None, None] + np.arange(length[0])[None, :, None]) * size[1]
                 + start[1][:, None, None] + np.arange(length[1])[None, None, :])
        cells = cells.reshape(len(copy), -1)
        self._last_cells = tf.constant((copy[:, None] * size[0] * size[1] + cells).astype(np.int32))
        rows = cells[:, :, None] * last_channels + np.arange(last_channels)
        self._dense_rows = tf.constant(rows.reshape(len(copy), -1).astype(np.int32))

    def multiply_adds(self) -> dict:
        """Multiply-adds of the convolutions and Dense layers per map (all positions),
        {"batched": the full net on every occluded copy, "incremental": the windows, the
        first Dense's changed rows and the cached pass}: their ratio bounds the gain
        (poolings, gathers and activations aside)."""
        chain, rotations = self.chain, self.chain.rotations
        full = window = 0
        lengths = iter(self._window_lengths)
        for step in chain.steps:
            if step.kind == "pointwise":
                continue
            length = next(lengths)
            if isinstance(step.layer, layers.Conv2D):
                per_cell = int(np.prod(step.kernel)) * int(step.layer.kernel.shape[2]) * \
                    step.out_shape[2]
                full += step.out_shape[0] * step.out_shape[1] * per_cell * rotations
                window += length[0] * length[1] * per_cell * rotations
        units = int(chain.dense.kernel.shape[1])
        features = int(chain.dense.kernel.shape[0])
        full += features * units  # after RotationPool's mean: once per occluded stamp
        window += (features if self._last_full else
                   rotations * int(np.prod(self._last_shape))) * units
        tail = sum(int(np.prod(layer.kernel.shape)) for layer in chain.tail
                   if isinstance(layer, layers.Dense))
        full, window = full + tail, window + tail
        return {"batched": self.positions * full,
                "incremental": self.positions * window + full}

    def _cache(self, stamps):
        """The unoccluded stamps' activations: the tower's input and each step's output,
        (R*m, h, w, c), copies turned r times in block r (RotationStack's order)."""
        x = stamps
        if self.chain.rotations == 4:
            x = RotationStack()(x)
        cached = [x]
        for step in self.chain.steps:
            x = step.layer(x, training=False)
            cached.append(x)
        return cached

    def _chunk_maps(self, stamps, target, base):
        """stamps (m, H, W, C), target (m,) int32, base (m,) -> flat maps (m, H*W).

        Windows are kept as (m * Q, cells, channels), stamp-major, so that one gather
        from [cache; previous windows] assembles a step's inputs with no transpose.
        """
        chain, rotations = self.chain, self.chain.rotations
        m = tf.shape(stamps)[0]
        cached = self._cache(stamps)
        # the input windows of every (stamp, position, copy): the stamp, patch hidden
        source, cells = _stamp_major(cached[0], ((0, 0), (0, 0)), 0.0, rotations)
        index = tf.reshape(tf.range(m)[:, None, None] * cells + self._first_index[None], [-1])
        window = tf.reshape(tf.gather(source, index), [m, self.queries, -1, source.shape[-1]])
        window = window * (1.0 - self._hidden)
        if self.fill_value:
            window = window + self.fill_value * self._hidden
        window = tf.reshape(window, [m * self.queries, -1, source.shape[-1]])
        shape = self._first_shape
        for step, before, plan in zip(chain.steps, cached[:-1], self._assemblies, strict=True):
            channels = window.shape[-1]
            if plan is None:  # pointwise: the same window
                flat = tf.reshape(window, [-1, *shape, channels])
                window = tf.reshape(step.layer(flat, training=False),
                                    [m * self.queries, -1, step.out_shape[2]])
                continue
            assembly, full, out_shape = plan
            if full:  # every position changes everything: pad the windows, no gathers
                inputs = tf.reshape(window, [-1, *shape, channels])
                if step.kind == "window":
                    inputs = tf.pad(inputs, [[0, 0], *assembly.pad, [0, 0]],
                                    constant_values=step.pad_value)
            else:
                source, cells = _stamp_major(before, assembly.pad, step.pad_value, rotations)
                from_cache = tf.range(m)[:, None, None] * cells + assembly.cache_index[None]
                previous = tf.shape(window)[1]
                from_window = (m * cells  # past the cache in the source
                               + tf.range(m)[:, None, None] * self.queries * previous
                               + assembly.window_index[None])
                index = tf.where(assembly.from_window[None], from_window, from_cache)
                source = tf.concat([source, tf.reshape(window, [-1, channels])], 0)
                inputs = tf.reshape(tf.gather(source, tf.reshape(index, [-1])),
                                    [-1, *assembly.shape, channels])
            outputs = _apply_window(step, inputs, full)
            shape = out_shape
            window = tf.reshape(outputs, [m * self.queries, -1, step.out_shape[2]])
        probabilities = tf.cast(self._classify(window, cached[-1], m), tf.float32)  # (m, P, K)
        occluded_target = tf.gather(probabilities, target, axis=2, batch_dims=1)  # (m, P)
        return tf.matmul(base[:, None] - occluded_target, self._weights)

    def _classify(self, window, last, m):
        """Class probabilities (m, P, K) of every position from the last windows
        (m * Q, n, c) and the cached last maps (R*m, h, w, c)."""
        chain, rotations = self.chain, self.chain.rotations
        dense = chain.dense
        kernel = ops.convert_to_tensor(dense.kernel)
        if self._last_full:
            new = tf.reshape(window, [m, self.positions, rotations, -1])
            pre = tf.matmul(tf.reduce_mean(new, axis=2), kernel)  # (m, P, U)
        else:
            source, cells = _stamp_major(last, ((0, 0), (0, 0)), 0.0, rotations)
            index = tf.range(m)[:, None, None] * cells + self._last_cells[None]
            old = tf.reshape(tf.gather(source, tf.reshape(index, [-1])), tf.shape(window))
            change = tf.reshape(window - old, [m, self.queries, -1])
            rows = tf.gather(kernel, self._dense_rows)  # (Q, n, U)
            change = tf.einsum("bqn,qnu->bqu", change, rows)
            change = tf.reduce_sum(tf.reshape(change, [m, self.positions, rotations, -1]), 2)
            features = tf.reduce_mean(tf.reshape(last, [rotations, m, -1]), axis=0)
            pre = tf.matmul(features, kernel)[:, None] + change / rotations
        if dense.use_bias:
            pre = pre + ops.convert_to_tensor(dense.bias)
        x = tf.reshape(dense.activation(pre), [m * self.positions, -1])
        for layer in chain.tail:
            x = layer(x, training=False)
        return tf.reshape(x, [m, self.positions, -1])


def _stamp_major(cache, pad, pad_value, rotations):
    """The cached maps (R*m, h, w, c), padded by ``pad`` with ``pad_value``, as rows
    (m * R * h' * w', c) in (stamp, copy, row, column) order, and the rows per stamp."""
    if any(pad[0]) or any(pad[1]):
        cache = tf.pad(cache, [[0, 0], pad[0], pad[1], [0, 0]], constant_values=pad_value)
    shape = tf.shape(cache)
    cells = shape[1] * shape[2]
    if rotations > 1:
        cache = tf.transpose(tf.reshape(cache, [rotations, -1, cells, shape[3]]), [1, 0, 2, 3])
    return tf.reshape(cache, [-1, cache.shape[-1]]), rotations * cells


def _apply_window(step: SpatialStep, inputs, full: bool):
    """A step on assembled input windows (N, rows, cols, c) read with ``valid`` padding
    (``full`` shift steps: the layer itself on the whole maps)."""
    layer = step.layer
    if step.kind == "shift":
        return layer(inputs) if full else inputs
    if isinstance(layer, layers.Conv2D):
        x = ops.conv(inputs, layer.kernel, strides=step.stride, padding="valid")
        if layer.use_bias:
            x = x + layer.bias
        return layer.activation(x)
    pool = ops.max_pool if isinstance(layer, layers.MaxPooling2D) else ops.average_pool
    return pool(inputs, step.kernel, step.stride, padding="valid")

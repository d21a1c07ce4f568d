"""The exact occlusion engine: hide each patch, re-classify, record the confidence drop.

For a stamp x (H, W, C) and a classifier with softmax output f, the target class c is
argmax f(x) (or a given label). For every patch position p, x'_p is x with the patch set
to ``fill`` in every channel; the drop is d_p = f_c(x) - f_c(x'_p) (positive = the patch
was evidence for c). The map gives each pixel the mean (``reduce="mean"``, captum) or sum
(``"sum"``, xplique) of the drops of the patches that cover it; a pixel no patch covers
gets 0. Positions:

- ``padding="same"``: one patch centred on every stride point (0, s, 2s, ...), clipped at
  the borders: 441 positions on 21x21 at stride 1;
- ``padding="valid"``: patches wholly inside, top-left corners at 0, s, 2s, ... (captum's
  and xplique's placement): 361 positions for a 3x3 patch at stride 1.

The engine takes a predict function, never a model file: it knows nothing of Keras files,
DVC or MLflow. One compiled TensorFlow function takes a block of stamps and loops, inside
the graph, over chunks of ``chunk_size`` stamps whose occluded copies (``chunk_size *
positions`` images) go through the classifier in one batch, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

PADDINGS = ("same", "valid")
REDUCTIONS = ("mean", "sum")
# Chunks per compiled call: enough to amortise the call's overhead, few enough for a
# progress bar that moves and for bounded memory (only the maps come back).
CHUNKS_PER_CALL = 16


def patch_masks(height: int, width: int, *, patch: int = 3, stride: int = 1,
                padding: str = "same") -> np.ndarray:
    """(P, H, W) float32 0/1 masks of the occluding patches, in row-major position order.

    ``same``: the patch's centre (row i, column j) runs over 0, s, 2s, ... in each
    direction and covers rows i - patch//2 ... i - patch//2 + patch - 1 (clipped).
    ``valid``: top-left corners at 0, s, 2s, ... while the patch fits.
    """
    _check_geometry(height, width, patch, stride, padding)
    if padding == "same":
        starts_y = [i - patch // 2 for i in range(0, height, stride)]
        starts_x = [j - patch // 2 for j in range(0, width, stride)]
    else:
        starts_y = list(range(0, height - patch + 1, stride))
        starts_x = list(range(0, width - patch + 1, stride))
    masks = np.zeros((len(starts_y) * len(starts_x), height, width), np.float32)
    for p, (y0, x0) in enumerate((y, x) for y in starts_y for x in starts_x):
        masks[p, max(y0, 0):max(y0 + patch, 0), max(x0, 0):max(x0 + patch, 0)] = 1.0
    return masks


def n_positions(height: int, width: int, *, patch: int = 3, stride: int = 1,
                padding: str = "same") -> int:
    """Number of patch positions (classifier inferences per map, the base pass aside)."""
    _check_geometry(height, width, patch, stride, padding)
    if padding == "same":
        return len(range(0, height, stride)) * len(range(0, width, stride))
    return len(range(0, height - patch + 1, stride)) * len(range(0, width - patch + 1, stride))


def quarter_turn_symmetric(height: int, width: int, *, patch: int = 3, stride: int = 1,
                           padding: str = "same") -> bool:
    """Whether a quarter turn maps the set of patch masks onto itself.

    Then, for a classifier whose output does not change when the stamp is turned by 90
    degrees, the exact map of a turned stamp is the turned map (each turned patch is a
    patch of the turned stamp, hiding it changes the output identically, and a pixel's
    covering patches turn with it): a turned (stamp, map) pair is exact training data.
    Holds for ``same`` and ``valid`` at stride 1 on a square stamp; not when the stride
    leaves the last row uncovered (21x21 at stride 3: centres 0..18).
    """
    if height != width:
        return False
    masks = patch_masks(height, width, patch=patch, stride=stride, padding=padding)
    turned = np.rot90(masks, 1, axes=(1, 2))
    return {m.tobytes() for m in masks.astype(bool)} == {m.tobytes() for m in turned.astype(bool)}


def quarter_turns(stamps: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """stamps (N, H, W, C) and their maps (N, H, W) -> (4N, ...) each: the originals, then
    all turned by 90, 180 and 270 degrees (counter-clockwise), in the same order for both,
    so row i + k*N of the result is row i turned k times."""
    turned_stamps = [np.rot90(stamps, k, axes=(1, 2)) for k in range(4)]
    turned_maps = [np.rot90(maps, k, axes=(1, 2)) for k in range(4)]
    return np.concatenate(turned_stamps), np.concatenate(turned_maps)


def _check_geometry(height, width, patch, stride, padding) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if int(patch) != patch or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")
    if patch > min(height, width):
        raise ValueError(f"patch {patch} is larger than the {height}x{width} stamp")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")


class OcclusionEngine:
    """Exact occlusion maps for one classifier and one setting; reuse it across calls so
    the compiled function is traced once. See ``occlusion_maps`` for the arguments."""

    name = "batched"  # every occluded copy through the whole classifier

    def __init__(self, predict_fn: Callable, height: int, width: int, *, patch: int = 3,
                 stride: int = 1, fill: float = 0.0, padding: str = "same",
                 reduce: str = "mean", channels: tuple[int, ...] | None = None):
        if channels is not None and (not channels or min(channels) < 0):
            raise ValueError(f"channels must be non-empty channel indices, got {channels!r}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if not np.isfinite(fill):
            raise ValueError(f"fill must be finite, got {fill!r}")
        masks = patch_masks(height, width, patch=patch, stride=stride, padding=padding)
        self.predict_fn = predict_fn
        self.masks = masks  # (P, H, W) 0/1
        self.fill_value = float(fill)
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.shape = (height, width)
        self.positions = len(masks)
        cover = masks.reshape(len(masks), -1)  # (P, H*W)
        if reduce == "mean":
            counts = cover.sum(axis=0)
            cover = np.divide(cover, counts, out=np.zeros_like(cover), where=counts > 0)
        self.weights = cover  # map = drops @ weights
        self.keep = tf.constant(1.0 - masks[..., None])  # (P, H, W, 1)
        # With the default fill 0 the copies are one multiply: the add would cost ~10 %.
        self.fill = None if fill == 0 else tf.constant(float(fill) * masks[..., None])
        self._weights = tf.constant(cover)
        self._block_maps = tf.function(self._block_maps_graph, reduce_retracing=True)

    def _chunk_maps(self, stamps, target, base):
        """stamps (m, H, W, C), target (m,) int32, base (m,) -> flat maps (m, H*W)."""
        m = tf.shape(stamps)[0]
        occluded = stamps[:, None] * self.keep[None]  # (m, P, H, W, C)
        if self.fill is not None:
            occluded = occluded + self.fill[None]
        flat = tf.reshape(occluded, tf.concat([[m * self.positions], tf.shape(stamps)[1:]], 0))
        probabilities = tf.cast(self.predict_fn(flat), tf.float32)
        probabilities = tf.reshape(probabilities, [m, self.positions, -1])
        occluded_target = tf.gather(probabilities, target, axis=2, batch_dims=1)  # (m, P)
        return tf.matmul(base[:, None] - occluded_target, self._weights)

    def _block_maps_graph(self, stamps, target, base, chunk_size):
        """Maps of a block of stamps, ``chunk_size`` stamps per classifier call.

        The loop over chunks runs inside the graph: a Python loop would pay a call's
        overhead per chunk, and small chunks are what keep the occluded copies in cache.
        Chunks are independent, so the runtime overlaps consecutive ones on spare cores.
        """
        m = tf.shape(stamps)[0]
        n_chunks = (m + chunk_size - 1) // chunk_size
        parts = tf.TensorArray(tf.float32, size=n_chunks, infer_shape=False)
        for i in tf.range(n_chunks):
            start = i * chunk_size
            stop = tf.minimum(start + chunk_size, m)
            parts = parts.write(i, self._chunk_maps(stamps[start:stop], target[start:stop],
                                                    base[start:stop]))
        return tf.reshape(parts.concat(), [m, self.shape[0] * self.shape[1]])

    def maps(self, stamps: np.ndarray, *, target: np.ndarray | None = None,
             chunk_size: int = 64, progress: bool = False):
        """(maps, target, base_prob) of ``stamps``; see ``occlusion_maps``."""
        stamps = np.asarray(stamps)
        if stamps.ndim != 4:
            raise ValueError(f"stamps must have shape (N, H, W, C), got {stamps.shape}")
        if stamps.shape[1:3] != self.shape:
            raise ValueError(f"stamps are {stamps.shape[1]}x{stamps.shape[2]}, the engine "
                             f"was set up for {self.shape[0]}x{self.shape[1]}")
        if not np.issubdtype(stamps.dtype, np.number):
            raise ValueError(f"stamps must be numeric, got dtype {stamps.dtype}")
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if self.channels is not None:
            if max(self.channels) >= stamps.shape[-1]:
                raise ValueError(f"the classifier sees channels {self.channels}, but the "
                                 f"stamps have {stamps.shape[-1]}")
            # Unseen channels cannot change the output: copying them would only cost time.
            stamps = stamps[..., list(self.channels)]
        stamps = stamps.astype(np.float32, copy=False)
        n = len(stamps)
        if n and not np.isfinite(stamps).all():
            bad = int(np.flatnonzero(~np.isfinite(stamps).reshape(n, -1).all(axis=1))[0])
            raise ValueError(f"stamps hold NaN or infinite values (first in stamp {bad})")

        base = _base_probabilities(self.predict_fn, stamps, chunk_size)
        n_classes = base.shape[1] if n else 0
        if target is None:
            target = base.argmax(axis=1) if n else np.zeros(0, np.int64)
        else:
            target = np.asarray(target)
            if target.shape != (n,) or not np.issubdtype(target.dtype, np.integer):
                raise ValueError(f"target must be ({n},) integers, got {target.shape} "
                                 f"{target.dtype}")
            if n and (target.min() < 0 or target.max() >= n_classes):
                raise ValueError(f"target classes must lie in [0, {n_classes}), "
                                 f"got [{target.min()}, {target.max()}]")
        target = target.astype(np.int64)
        base_prob = base[np.arange(n), target].astype(np.float32)

        maps = np.zeros((n, self.shape[0] * self.shape[1]), np.float32)
        block = chunk_size * CHUNKS_PER_CALL
        chunk = tf.constant(chunk_size, tf.int32)
        with tqdm(total=n, unit="map", desc="occlusion maps", disable=not progress,
                  mininterval=1.0) as bar:
            for start in range(0, n, block):
                stop = min(start + block, n)
                maps[start:stop] = self._block_maps(
                    stamps[start:stop], target[start:stop].astype(np.int32),
                    base_prob[start:stop], chunk).numpy()
                bar.update(stop - start)
        return maps.reshape(n, *self.shape), target, base_prob


def occlusion_maps(
    predict_fn: Callable,
    stamps: np.ndarray,
    *,
    patch: int = 3,
    stride: int = 1,
    fill: float = 0.0,
    padding: str = "same",
    reduce: str = "mean",
    target: np.ndarray | None = None,
    channels: tuple[int, ...] | None = None,
    chunk_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact occlusion maps of ``stamps`` under the classifier ``predict_fn``.

    Parameters
    ----------
    predict_fn : maps a float32 tensor (B, H, W, C) to probabilities (B, K); it is traced
        by ``tf.function`` (a Keras model's ``__call__`` with ``training=False`` works).
    stamps : (N, H, W, C) float, finite (in [0, 1] for HiTS stamps).
    patch, stride, fill, padding, reduce : see the module docstring.
    target : (N,) int class per stamp, or None for the predicted class.
    channels : the channels the classifier sees, or None for all. When given, only those
        channels are occluded and ``predict_fn`` receives only them, (B, H, W, len).
    chunk_size : stamps whose occluded copies go through one call (chunk_size * P images).
    progress : show a progress bar over stamps.

    Returns
    -------
    maps : (N, H, W) float32 raw maps, values in [-1, 1] for ``mean`` (drops of
        probabilities), in [-k, k] for ``sum`` where k is the most patches on one pixel.
    target : (N,) int64 the class each map explains.
    base_prob : (N,) float32 f_target(x) of the unoccluded stamp, in [0, 1].
    """
    stamps = np.asarray(stamps)
    if stamps.ndim != 4:
        raise ValueError(f"stamps must have shape (N, H, W, C), got {stamps.shape}")
    engine = OcclusionEngine(predict_fn, stamps.shape[1], stamps.shape[2], patch=patch,
                             stride=stride, fill=fill, padding=padding, reduce=reduce,
                             channels=channels)
    return engine.maps(stamps, target=target, chunk_size=chunk_size, progress=progress)


def _base_probabilities(predict_fn, stamps: np.ndarray, chunk_size: int) -> np.ndarray:
    """(N, K) probabilities of the unoccluded stamps; a clear error when ``predict_fn``
    rejects the stamps (e.g. a wrong channel count) or returns something else."""
    batch = max(chunk_size * 64, 1024)
    outputs = []
    for start in range(0, len(stamps), batch):
        chunk = tf.constant(stamps[start:start + batch])
        try:
            probabilities = np.asarray(predict_fn(chunk), dtype=np.float64)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
            raise ValueError(
                f"the classifier rejected stamps of shape {stamps.shape[1:]} "
                f"(wrong channel count or size?): {str(err).splitlines()[0]}") from None
        if probabilities.ndim != 2 or len(probabilities) != len(chunk):
            raise ValueError(f"predict_fn must return (B, classes) probabilities, got shape "
                             f"{probabilities.shape} for {len(chunk)} stamps")
        outputs.append(probabilities)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def keras_predict_fn(model) -> Callable:
    """A traceable predict function for a Keras model (inference mode, no ``predict``
    overhead: the engine compiles it inside its own ``tf.function``)."""
    return lambda stamps: model(stamps, training=False)

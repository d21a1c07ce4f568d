"""Maps for a Keras model: the exact engine of a classifier, the compiled one-pass
explainer, and the check every stamp batch passes before either sees it.

Every shape comes from the model's own input (H, W, C), never from a constant.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.core.geometry import StampGeometry, check_unit_range


def model_geometry(model) -> StampGeometry:
    """The stamp geometry a Keras model takes (its input (None, H, W, C))."""
    return StampGeometry.from_input_shape(model.input.shape)


def check_stamps(stamps, shape: tuple[int, int, int], source: str = "input",
                 allow_out_of_range: bool = False) -> np.ndarray:
    """``stamps`` as a float32 (N, H, W, C) array of ``shape`` (H, W, C); ``ValueError``
    naming ``source`` and the problem when it has another shape, is not numeric, holds
    NaN/inf, or (unless ``allow_out_of_range``) values outside [0, 1] by more than
    ``geometry.RANGE_TOLERANCE``."""
    try:
        array = np.asarray(stamps)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: stamps are not a regular numeric array ({err})") from None
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{source}: stamps must be numeric, got dtype {array.dtype}")
    if array.ndim != 4 or array.shape[1:] != tuple(shape):
        raise ValueError(f"{source}: stamps must have shape (N, {', '.join(map(str, shape))}), "
                         f"got {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))[0])
        raise ValueError(f"{source}: stamps hold NaN or infinite values (first in stamp {bad})")
    if not allow_out_of_range:
        check_unit_range(array, source)
    return array


def engine_for(classifier, occlusion):
    """The exact engine for a Keras classifier under ``occlusion`` (an ``OcclusionParams``:
    patch, stride, fill, padding, reduce, engine), on the classifier's stamp size; only
    the channels the classifier sees are copied.

    ``engine``: ``batched`` (``OcclusionEngine``), ``incremental``
    (``IncrementalOcclusionEngine``; a ``ValueError`` saying why for a classifier it cannot
    run) or ``auto``: incremental where it can run the classifier, else batched, with one
    log line (WARNING, logger ``pipeline.occlusion``) saying why. The engine's ``name``
    says which one it is.
    """
    from pipeline.core.incremental import IncrementalOcclusionEngine, NotIncremental
    from pipeline.core.models.classifiers import seen_channels_predict_fn
    from pipeline.core.occlusion import OcclusionEngine

    height, width = model_geometry(classifier).map_shape
    settings = dict(patch=occlusion.patch, stride=occlusion.stride, fill=occlusion.fill,
                    padding=occlusion.padding, reduce=occlusion.reduce)
    choice = getattr(occlusion, "engine", "batched")
    if choice in ("auto", "incremental"):
        try:
            return IncrementalOcclusionEngine(classifier, height, width, **settings)
        except NotIncremental as err:
            if choice == "incremental":
                raise ValueError(f"occlusion.engine incremental cannot run classifier "
                                 f"{classifier.name!r}: {err}") from None
            logging.getLogger("pipeline.occlusion").warning(
                "exact maps: the batched engine (the incremental engine cannot run "
                "classifier %r: %s)", classifier.name, err)
    predict, channels = seen_channels_predict_fn(classifier)
    return OcclusionEngine(predict, height, width, channels=channels, **settings)


def compile_explainer(model):
    """The Keras explainer as a function traced once for any batch size: stamps
    (B, H, W, C) float32 -> {"maps": (B, H, W) float32[, "target": (B,) int32,
    "base_prob": (B,) float32, "doubt": (B,) float32]} (a model with one output, an
    older explainer, gives "maps" alone). One stamp takes ~2 ms this way, where
    ``model.predict`` pays ~95 ms of per-call overhead (this CPU)."""
    import tensorflow as tf

    shape = model_geometry(model).shape

    def outputs(stamps):
        out = model(stamps, training=False)
        return dict(out) if isinstance(out, dict) else {"maps": out}

    return tf.function(outputs, input_signature=[tf.TensorSpec([None, *shape], tf.float32)])


def predict_explained(explain, stamps: np.ndarray, batch_size: int = 4096) -> dict:
    """{name: (N, ...) array} of ``explain`` (``compile_explainer``'s function) on
    ``stamps`` (N, H, W, C) float32, ``batch_size`` stamps per call: "maps" (N, H, W)
    float32 and whatever else the explainer gives (target, base_prob, doubt: (N,))."""
    parts: dict[str, list] = {}
    for start in range(0, max(len(stamps), 1), batch_size):
        for name, value in explain(stamps[start:start + batch_size]).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def predict_maps(explain, stamps: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(N, H, W) float32 maps of ``stamps`` (N, H, W, C) float32 under ``explain``
    (``compile_explainer``'s function), ``batch_size`` stamps per call."""
    return predict_explained(explain, stamps, batch_size)["maps"].astype(np.float32, copy=False)

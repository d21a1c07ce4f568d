"""A doubt per estimated map: a small learned head that predicts how wrong the map is.

The estimator's maps are excellent on average, but a user receives single maps. The doubt
head reads what the explainer has at hand when it delivers a map, the stamp (the channels
the classifier sees), the estimator's condition without the tapped activations (class,
margin, features) and the estimated map itself, and predicts its error against the exact
map: doubt ~ 1 - r (r: Pearson r of the estimate with the exact map, ``fidelity``), in
[0, 2]; 0 is "no doubt". A caller recomputes the maps of highest doubt with the exact
engine (``pipeline.core.selective``).

Why a learned head and not an ensemble's spread: the spread of K estimators costs K times
the estimator (the doubt may add at most a tenth of the explainer's time), and the
members, trained on the same maps, share the errors that matter here (confident bogus
stamps whose map amplitude the estimator understates); the head is trained on those very
errors, measured on maps the estimator did not learn from (the validation split). It is
small so that it stays cheap beside the explainer: the stamp and map pooled to 7x7, one
small conv, a few dense units (``evaluate`` measures its time: ~11 % over the seed
chain's explainer without it).

Target (``doubt_target``): sqrt(error), error = 1 - r on non-trivial maps, 0 on trivial
ones (whose estimates are near zero and never judged), so the head learns the small
errors most maps have as well as the rare large ones.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from pipeline.core.models.layers import Doubt, MapSummary, SelectChannels

POOL = 3  # 21x21 -> 7x7: the head sees where the map and stamp are, not every pixel


def doubt_target(error: np.ndarray) -> np.ndarray:
    """(N,) float32 training target of the head's score: sqrt(max(error, 0)), ``error``
    (N,) the true error 1 - r (0 for trivial maps, ``selective.error_of``); an exact
    estimate (error 0) has target 0, the least doubt."""
    return np.sqrt(np.maximum(np.asarray(error, np.float64), 0.0)).astype(np.float32)


def build_doubt_head(stamp_shape, channels, condition_dim: int, *, filters: int = 16,
                     width: int = 32, name: str = "doubt_head") -> keras.Model:
    """[stamps (B, H, W, C) in [0, 1], condition (B, D), maps (B, H, W) in [-1, 1]] ->
    score (B, 1), trained on ``doubt_target``; ``doubt_model`` turns it into the doubt."""
    height, width_px = stamp_shape[:2]
    stamps = keras.Input(stamp_shape, name="stamps")
    condition = keras.Input((condition_dim,), name="condition")
    maps = keras.Input((height, width_px), name="maps")
    seen = SelectChannels(channels, name="doubt_channels")(stamps)
    planes = layers.Concatenate(name="doubt_planes")(
        [seen, layers.Reshape((height, width_px, 1), name="doubt_map_plane")(maps)])
    x = layers.AveragePooling2D(POOL, padding="same", name="doubt_pool")(planes)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="doubt_conv")(x)
    x = layers.Flatten(name="doubt_flat")(x)
    parts = [layers.Dense(width, activation="relu", name="doubt_spatial")(x),
             layers.Dense(width, activation="relu", name="doubt_context")(condition),
             MapSummary(name="doubt_map_summary")(maps)]
    x = layers.Concatenate(name="doubt_joined")(parts)
    x = layers.Dense(width, activation="relu", name="doubt_hidden")(x)
    score = layers.Dense(1, name="doubt_score")(x)
    return keras.Model([stamps, condition, maps], score, name=name)


def doubt_model(head: keras.Model) -> keras.Model:
    """[stamps, condition, maps] -> doubt (B,) in [0, 2]: ``head``'s score through
    ``Doubt`` (the estimated 1 - r)."""
    doubt = Doubt(name="doubt")(head.output)
    return keras.Model(head.inputs, doubt, name=f"{head.name}_doubt")


def doubt_condition_size(condition_dim: int, tap_size: int = 0) -> int:
    """How many leading columns of an estimator's condition (B, ``condition_dim``) the
    head reads: all but the flattened taps (``tap_size`` values at the end of a ``taps``
    condition), which are large (deephits: 25,600) and already behind the map."""
    size = condition_dim - tap_size
    if size < 2:
        raise ValueError(f"a condition of {condition_dim} values with {tap_size} tapped "
                         "leaves nothing for the doubt head")
    return size

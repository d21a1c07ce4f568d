"""What the stages hand each other on disk: prepared splits, exact maps, Keras models.

Every reader checks what it reads and fails with one clear error naming the file: a
missing file names the stage that makes it, a truncated or hostile ``.npz`` is refused
without unpickling, and maps that no longer belong to their stamps (the stale-maps check,
written here once) say so.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.data.split import SPLITS
from pipeline.core.geometry import StampGeometry

# The prepared splits' arrays every stage needs; the twin adds metadata arrays.
STAMP_KEYS = ("images", "labels")
MAP_KEYS = ("maps", "target", "base_prob")
# Held in each prepared split: the names of the stamps' channels, (C,) str.
CHANNELS_KEY = "channels"
# A share of maps explaining another class than the classifier predicts above this means
# the maps were made by another classifier (float rounding flips a handful of ties).
STALE_CLASS_SHARE = 0.001


def load_split(path: str | Path, keys: tuple[str, ...],
               optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays ``keys`` (and those of ``optional`` that exist) of a split ``.npz``, never
    unpickling objects; a clear error naming the file when it is missing, unreadable or
    lacks a key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the stage that makes it first)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {missing}; found {npz.files}")
            arrays = {k: npz[k] for k in (*keys, *optional) if k in npz.files}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: unreadable .npz, truncated or corrupt ({err})") from None
    except ValueError as err:  # not an .npz (numpy: "pickled data"), or our missing keys
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a plain .npz ({err})") from None
    if "images" in arrays and not np.isfinite(arrays["images"]).all():
        raise ValueError(f"{path}: images hold NaN or infinite values")
    return arrays


def load_prepared(prepared_dir: str | Path, names=SPLITS,
                  optional: tuple[str, ...] = ()) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"images" (N, H, W, C), "labels" (N,), *optional}} of the prepared splits."""
    return {name: load_split(Path(prepared_dir) / f"{name}.npz", STAMP_KEYS, optional)
            for name in names}


def stamp_geometry(prepared_dir: str | Path, name: str = "train") -> StampGeometry:
    """The stamp geometry of the prepared data: the shape of the split ``name``'s stamps
    (read from the array's header, not its data) and the channel names ``prepare`` stored
    beside them."""
    path = Path(prepared_dir) / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the prepare stage first)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise ValueError(f"{path}: missing array(s) ['images']; found {npz.files}")
            channels = npz[CHANNELS_KEY] if CHANNELS_KEY in npz.files else None
            with npz.zip.open("images.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape = read_header(member)[0]
        return StampGeometry.from_stamps(np.empty((0, *shape[1:])), channels)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: unreadable .npz, truncated or corrupt ({err})") from None
    except ValueError as err:
        raise ValueError(err.args[0] if str(err).startswith(str(path))
                         else f"{path}: {err}") from None


def load_maps(occlusion_dir: str | Path, name: str, n_stamps: int,
              keys: tuple[str, ...] = MAP_KEYS) -> dict[str, np.ndarray]:
    """The exact maps of split ``name`` ({"maps" (N, H, W), "target" (N,), "base_prob"
    (N,)}); a clear error when they are not as many as the split's ``n_stamps`` stamps."""
    path = Path(occlusion_dir) / f"{name}.npz"
    maps = load_split(path, keys)
    if len(maps[keys[0]]) != n_stamps:
        raise ValueError(f"{path}: {len(maps[keys[0]])} maps for {n_stamps} stamps "
                         "(stale maps? run dvc repro)")
    return maps


def load_stamps_and_maps(prepared_dir: str | Path, occlusion_dir: str | Path, names=SPLITS,
                         map_keys: tuple[str, ...] = MAP_KEYS,
                         optional: tuple[str, ...] = ()) -> dict[str, dict[str, np.ndarray]]:
    """Per split: the prepared stamps and labels joined with their exact maps."""
    splits = load_prepared(prepared_dir, names, optional)
    return {name: split | load_maps(occlusion_dir, name, len(split["labels"]), map_keys)
            for name, split in splits.items()}


def check_maps_explain_predictions(occlusion_dir: str | Path, name: str, target: np.ndarray,
                                   predicted: np.ndarray) -> None:
    """The stale-maps check against a classifier: ``ValueError`` when more than
    ``STALE_CLASS_SHARE`` of split ``name``'s maps explain (``target`` (N,)) another class
    than the classifier predicts (``predicted`` (N,)): maps of another classifier."""
    stale = float((np.asarray(predicted) != np.asarray(target)).mean()) if len(target) else 0.0
    if stale > STALE_CLASS_SHARE:
        raise ValueError(f"{Path(occlusion_dir) / f'{name}.npz'}: {stale:.1%} of the maps "
                         "explain another class than the classifier predicts (stale maps? "
                         "run dvc repro)")


def load_model(path: str | Path, made_by: str = "train_classifier"):
    """The Keras model saved at ``path`` (the project's layers registered first);
    ``made_by`` names the stage to run when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the {made_by} stage first)")
    import keras

    import pipeline.core.models  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError) as err:
        raise ValueError(f"{path}: not a loadable Keras model ({err})") from None


def registered_version(metrics_dir: str | Path, stage: str) -> dict:
    """{"name", "version", "run_id"} of the model version the training stage ``stage``
    recorded in ``<metrics_dir>/<stage>.json`` ({} when it recorded none)."""
    import json

    try:
        return json.loads((Path(metrics_dir) / f"{stage}.json").read_text()).get(
            "registered", {})
    except (OSError, ValueError):
        return {}

"""Safe loading and validation of the real HiTS2013 pickle.

A pickle can run arbitrary code when loaded, so ``pickle.load`` is never called on it.
``RestrictedUnpickler`` resolves only the handful of globals that numpy arrays and plain
containers need; anything else (``os.system``, ``subprocess``, ``builtins.eval``, ...) is
refused before it can be called. Python-2 pickles (the Deep-HiTS release) load with
``encoding="latin1"``.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from pathlib import Path

import numpy as np
from numpy._core.multiarray import _reconstruct, scalar
from numpy._core.numeric import _frombuffer

from pipeline.core.geometry import HITS, check_unit_range

# Exactly what numpy array pickles (protocols 0-5, Python 2 and 3, numpy 1 and 2) refer to.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(text, "latin1") in protocols < 3.
    ("_codecs", "encode"): codecs.encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Python 3 writes b"" as bytes() in protocols < 3 (bounded by the unpickler).
    ("builtins", "bytes"): bytes,
    ("__builtin__", "bytes"): bytes,
}


class HitsDataError(ValueError):
    """The HiTS file is missing, unsafe, corrupt or not in the expected format."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy array reconstruction and plain containers.

    ``max_bytes``: no array or bytes object it builds may be larger (the data of a plain
    pickle is inside it, so the file's size bounds every honest array; a 38-byte pickle
    asking for ``numpy.ndarray((10**13,))`` is refused instead of allocated)."""

    def __init__(self, file, *, max_bytes: int, **kwargs):
        super().__init__(file, **kwargs)
        self.max_bytes = max_bytes

    def find_class(self, module: str, name: str):
        try:
            found = _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: only numpy arrays and plain "
                "containers are allowed"
            ) from None
        if found is np.ndarray:
            return self._bounded_ndarray
        if found is _reconstruct:
            return self._bounded_reconstruct
        if found is bytes:
            return self._bounded_bytes
        return found

    def _refuse_beyond(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_bytes:
            raise pickle.UnpicklingError(
                f"refused {what} of {nbytes:,} bytes: larger than the whole pickle "
                f"({self.max_bytes:,} bytes) could hold")

    def _bounded_ndarray(self, shape, dtype=float, *args, **kwargs):
        self._refuse_beyond(_array_bytes(shape, dtype), f"an array of shape {shape}")
        return np.ndarray(shape, dtype, *args, **kwargs)

    def _bounded_reconstruct(self, subtype, shape, dtype):
        # numpy pickles name ndarray as _reconstruct's subtype: ours stands for it
        if subtype == self._bounded_ndarray:
            subtype = np.ndarray
        self._refuse_beyond(_array_bytes(shape, dtype), f"an array of shape {shape}")
        return _reconstruct(subtype, shape, dtype)

    def _bounded_bytes(self, *args):
        # bytes(n) allocates n zero bytes; Python 3 pickles b"" as bytes() in protocols < 3
        if args and isinstance(args[0], int):
            self._refuse_beyond(args[0], "a bytes object")
        return bytes(*args)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: not a plain data pickle")


def _array_bytes(shape, dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` would take; huge for nonsense shapes."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        raise pickle.UnpicklingError(f"refused an array of dtype {dtype!r}") from None
    count = 1
    for dim in dims:
        if not isinstance(dim, (int, np.integer)) or dim < 0:
            raise pickle.UnpicklingError(f"refused an array of shape {shape!r}")
        count *= int(dim)
    return count * max(itemsize, 1)


def safe_loads(payload: bytes) -> object:
    """Unpickle ``payload`` with ``RestrictedUnpickler`` (no array larger than the payload),
    trying Python 3 then Python 2 (latin1) string decoding. Raises
    ``pickle.UnpicklingError`` on refused content."""
    bound = {"max_bytes": len(payload)}
    try:
        return RestrictedUnpickler(io.BytesIO(payload), **bound).load()
    except UnicodeDecodeError:
        return RestrictedUnpickler(io.BytesIO(payload), encoding="latin1", **bound).load()


def load_hits_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load and validate the HiTS2013 pickle without running code from it.

    Returns
    -------
    images : (N, 21, 21, 4) float32 in [0, 1]
    labels : (N,) int64 in {0, 1}

    Raises
    ------
    HitsDataError naming the file and the problem: missing, refused (unsafe) content,
    truncated/corrupt, wrong keys, shape, dtype, non-finite or out-of-range values, bad
    labels, mismatched lengths.
    """
    path = Path(path)
    if not path.is_file():
        raise HitsDataError(f"{path}: file not found")
    payload = path.read_bytes()
    try:
        obj = safe_loads(payload)
    except pickle.UnpicklingError as err:
        if "refused" in str(err):
            raise HitsDataError(f"{path}: unsafe pickle, {err}") from None
        raise HitsDataError(f"{path}: corrupt or truncated pickle ({err})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise HitsDataError(
            f"{path}: corrupt or truncated pickle ({type(err).__name__}: {err})"
        ) from None
    return validate_stamps(obj, source=str(path))


def validate_stamps(obj: object, *, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a loaded ``{"images", "labels"}`` mapping; see ``load_hits_pickle``."""
    if not isinstance(obj, dict):
        raise HitsDataError(f"{source}: expected a dict with 'images' and 'labels', "
                            f"got {type(obj).__name__}")
    keys = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("images", "labels") if k not in keys]
    if missing:
        raise HitsDataError(f"{source}: missing key(s) {missing}; found {sorted(map(str, keys))}")
    images, labels = keys["images"], keys["labels"]
    if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
        raise HitsDataError(f"{source}: 'images' and 'labels' must be numpy arrays")
    if images.ndim != 4 or images.shape[1:] != HITS.shape:
        raise HitsDataError(
            f"{source}: images must have shape (N, {', '.join(map(str, HITS.shape))}), "
            f"got {images.shape}"
        )
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise HitsDataError(f"{source}: images must be numeric, got dtype {images.dtype}")
    if labels.ndim != 1:
        raise HitsDataError(f"{source}: labels must have shape (N,), got {labels.shape}")
    if len(labels) != len(images):
        raise HitsDataError(
            f"{source}: {len(images)} images but {len(labels)} labels (lengths must match)"
        )
    if len(images) == 0:
        raise HitsDataError(f"{source}: the file holds no stamps")
    images = images.astype(np.float32, copy=False)
    finite = np.isfinite(images)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.reshape(len(images), -1).all(axis=1))[0])
        raise HitsDataError(
            f"{source}: images hold {int((~finite).sum())} non-finite values (NaN or inf), "
            f"first in stamp {bad}"
        )
    try:
        check_unit_range(images, source)
    except ValueError as err:
        raise HitsDataError(str(err)) from None
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
            or labels.dtype == bool):
        raise HitsDataError(f"{source}: labels must be numeric, got dtype {labels.dtype}")
    values = np.unique(labels)
    if not np.isin(values, (0, 1)).all():
        raise HitsDataError(
            f"{source}: labels must be 0 (bogus) or 1 (real), found values "
            f"{values[~np.isin(values, (0, 1))][:5].tolist()}"
        )
    return images, labels.astype(np.int64)

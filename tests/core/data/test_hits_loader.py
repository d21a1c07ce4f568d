"""The safe HiTS loader: round trips, Python-2 pickles, hostile pickles, bad content."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from pipeline.core.data.hits import HitsDataError, load_hits_pickle


def _stamps(n=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 21, 21, 4)).astype(np.float32)
    labels = np.array([0, 1] * (n // 2), dtype=np.int64)
    return images, labels


def _write(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_valid_pickle_round_trips(tmp_path, protocol):
    images, labels = _stamps()
    path = _write(tmp_path / "hits.pkl", {"images": images, "labels": labels}, protocol)
    got_images, got_labels = load_hits_pickle(path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.float32 and got_labels.dtype == np.int64


def test_float64_images_and_float_labels_are_accepted(tmp_path):
    images, labels = _stamps()
    path = _write(tmp_path / "hits.pkl",
                  {"images": images.astype(np.float64), "labels": labels.astype(np.float64)})
    got_images, got_labels = load_hits_pickle(path)
    assert got_images.dtype == np.float32
    np.testing.assert_array_equal(got_labels, labels)


# --- A pickle as Python 2 + numpy 1 wrote it (protocol 2, byte strings as py2 `str`) -------

def _py2_str(data: bytes) -> bytes:
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(data)) + data  # BINSTRING


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def _py2_array(array: np.ndarray) -> bytes:
    dtype_code = {np.dtype("<f4"): b"f4", np.dtype("<i8"): b"i8"}[array.dtype]
    out = b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
    out += _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87" + b"R"  # (ndarray, (0,), 'b')
    dtype = b"cnumpy\ndtype\n" + _py2_str(dtype_code) + _py2_int(0) + _py2_int(1) + b"\x87R"
    dtype += b"(" + _py2_int(3) + _py2_str(b"<") + b"NNN" + _py2_int(-1) + _py2_int(-1)
    dtype += _py2_int(0) + b"tb"  # dtype.__setstate__
    shape = b"(" + b"".join(_py2_int(s) for s in array.shape) + b"t"
    state = b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"t"
    return out + state + b"b"  # ndarray.__setstate__


def _py2_pickle(mapping: dict) -> bytes:
    body = b"".join(_py2_str(key.encode()) + _py2_array(value) for key, value in mapping.items())
    return b"\x80\x02}(" + body + b"u."


def test_python2_latin1_pickle_loads(tmp_path):
    images, labels = _stamps()
    payload = _py2_pickle({"images": images, "labels": labels})
    # Really Python-2 style: plain Python 3 decoding (ASCII) cannot read it.
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(payload)
    path = tmp_path / "py2.pkl"
    path.write_bytes(payload)
    got_images, got_labels = load_hits_pickle(path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


# --- Hostile and broken files ---------------------------------------------------------------

class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    images, labels = _stamps()
    path = _write(tmp_path / "evil.pkl",
                  {"images": images, "labels": labels, "x": _RunsACommand(marker)})
    with pytest.raises(HitsDataError, match=r"evil\.pkl: unsafe pickle.*(system|posix)"):
        load_hits_pickle(path)
    assert not marker.exists()


def test_hostile_pickle_via_builtins_eval_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = (b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode()
               + b"')\ntR.")
    path = tmp_path / "eval.pkl"
    path.write_bytes(payload)
    with pytest.raises(HitsDataError, match="unsafe pickle.*builtins.eval"):
        load_hits_pickle(path)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(HitsDataError, match=r"nothere\.pkl: file not found"):
        load_hits_pickle(tmp_path / "nothere.pkl")


def test_truncated_file(tmp_path):
    images, labels = _stamps()
    payload = pickle.dumps({"images": images, "labels": labels}, protocol=4)
    path = tmp_path / "cut.pkl"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(HitsDataError, match=r"cut\.pkl: corrupt or truncated"):
        load_hits_pickle(path)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "text.pkl"
    path.write_text("images,labels\n1,2\n")
    with pytest.raises(HitsDataError, match=r"text\.pkl: corrupt or truncated"):
        load_hits_pickle(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("labels"), r"missing key\(s\) \['labels'\]"),
        (lambda d: d.update(images=d["images"][:, :20]), r"shape \(N, 21, 21, 4\)"),
        (lambda d: d["images"].__setitem__((2, 3, 4, 1), np.nan), "non-finite.*stamp 2"),
        (lambda d: d["images"].__setitem__((0, 0, 0, 0), 1.5), r"\[0, 1\]"),
        (lambda d: d["images"].__setitem__((0, 0, 0, 0), -0.1), r"\[0, 1\]"),
        (lambda d: d["labels"].__setitem__(3, 2), r"labels must be 0 \(bogus\) or 1.*\[2\]"),
        (lambda d: d.update(labels=d["labels"][:-1]), "6 images but 5 labels"),
        (lambda d: d.update(labels=d["labels"].reshape(3, 2)), r"labels must have shape \(N,\)"),
        (lambda d: d.update(images="not an array"), "must be numpy arrays"),
    ],
    ids=["no-labels", "wrong-shape", "nan", "above-1", "below-0", "bad-label", "mismatch",
         "labels-2d", "not-array"],
)
def test_bad_content_gets_its_own_clear_error(tmp_path, mutate, message):
    images, labels = _stamps()
    content = {"images": images.copy(), "labels": labels.copy()}
    mutate(content)
    path = _write(tmp_path / "bad.pkl", content)
    with pytest.raises(HitsDataError, match=message) as info:
        load_hits_pickle(path)
    assert str(path) in str(info.value)


def test_not_a_dict(tmp_path):
    path = _write(tmp_path / "list.pkl", [1, 2, 3])
    with pytest.raises(HitsDataError, match="expected a dict"):
        load_hits_pickle(path)


class _AsksForAHugeArray:
    """Pickles as a call of the allowed numpy.ndarray with a shape of 80 TB of float64."""

    def __reduce__(self):
        return (np.ndarray, ((10**13,),))


class _ReconstructsAHugeArray:
    """Pickles as numpy's own _reconstruct(ndarray, shape, dtype) with a 10 TB shape."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (10**13,), "u1"))


@pytest.mark.parametrize("hostile, nbytes", [(_AsksForAHugeArray(), "80,000,000,000,000"),
                                             (_ReconstructsAHugeArray(), "10,000,000,000,000")])
def test_arrays_larger_than_the_file_are_refused_not_allocated(tmp_path, hostile, nbytes):
    path = tmp_path / "huge.pkl"
    path.write_bytes(pickle.dumps({"images": hostile, "labels": np.zeros(1)}, protocol=2))
    assert path.stat().st_size < 400
    with pytest.raises(HitsDataError, match=rf"{path}: unsafe pickle, refused an array of "
                                            rf"shape \(10000000000000,\) of {nbytes} bytes"):
        load_hits_pickle(path)


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_an_empty_set_in_old_protocols_is_reported_as_empty(tmp_path, protocol):
    # Python 3 writes the empty arrays' b"" data as bytes() below protocol 3
    images, labels = _stamps()
    path = tmp_path / "empty.pkl"
    path.write_bytes(pickle.dumps({"images": images[:0], "labels": labels[:0]},
                                  protocol=protocol))
    with pytest.raises(HitsDataError, match=f"{path}: the file holds no stamps"):
        load_hits_pickle(path)

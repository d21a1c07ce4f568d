"""What the stages hand each other on disk: the geometry of the prepared data, and the
stale-maps checks, each naming the file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipeline.glue.artifacts import (
    check_maps_explain_predictions,
    load_maps,
    load_split,
    stamp_geometry,
)


def test_stamp_geometry_reads_the_shape_and_the_channel_names(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 31, 31, 3), np.float32),
             labels=np.array([0, 1]), channels=np.array(["template", "science", "difference"]))
    geometry = stamp_geometry(tmp_path)
    assert geometry.shape == (31, 31, 3)
    assert geometry.channels == ("template", "science", "difference")
    # a set written before channel names were stored: HiTS's four names
    np.savez(tmp_path / "test.npz", images=np.zeros((1, 21, 21, 4), np.float32))
    assert stamp_geometry(tmp_path, "test").channels[-1] == "snr_difference"


def test_stamp_geometry_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="val.npz: not found"):
        stamp_geometry(tmp_path, "val")
    np.savez(tmp_path / "train.npz", labels=np.array([0]))
    with pytest.raises(ValueError, match=r"train.npz: missing array\(s\) \['images'\]"):
        stamp_geometry(tmp_path)
    np.savez(tmp_path / "train.npz", images=np.zeros((1, 9, 9, 2)), channels=np.array(["a"]))
    with pytest.raises(ValueError, match="train.npz: 1 channel names"):
        stamp_geometry(tmp_path)
    (tmp_path / "train.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="train.npz: unreadable"):
        stamp_geometry(tmp_path)


def test_stale_maps_are_named(tmp_path):
    np.savez(tmp_path / "test.npz", maps=np.zeros((3, 21, 21)), target=np.array([0, 1, 1]),
             base_prob=np.ones(3))
    assert len(load_maps(tmp_path, "test", 3)["maps"]) == 3
    with pytest.raises(ValueError, match=r"test.npz: 3 maps for 4 stamps \(stale maps"):
        load_maps(tmp_path, "test", 4)
    check_maps_explain_predictions(tmp_path, "test", np.zeros(2000), np.r_[np.ones(2),
                                                                        np.zeros(1998)])
    with pytest.raises(ValueError, match=r"test.npz: 33.3% of the maps explain another class"):
        check_maps_explain_predictions(tmp_path, "test", np.array([0, 1, 1]),
                                       np.array([0, 1, 0]))


def test_a_broken_split_file_gets_one_line_naming_it(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, images=np.random.default_rng(0).random((4, 5, 5, 1)), labels=np.arange(4))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"^{path}: unreadable .npz, truncated or corrupt"):
        load_split(path, ("images", "labels"))
    corrupt = bytearray(whole)
    corrupt[200:260] = bytes(60)  # inside images.npy's data: its CRC no longer matches
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=f"^{path}: unreadable .npz, truncated or corrupt"):
        load_split(path, ("images", "labels"))
    path.write_bytes(pickle.dumps({"images": np.zeros(3)}))
    with pytest.raises(ValueError, match=f"^{path}: not a plain .npz"):
        load_split(path, ("images", "labels"))

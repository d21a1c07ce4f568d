"""The stratified split: the study's exact sizes, stratification, a partition, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.data.split import split_indices


def test_study_sizes_and_stratification():
    labels = np.repeat([0, 1], 50_000)
    np.random.default_rng(0).shuffle(labels)
    parts = split_indices(labels, seed=42)
    assert {k: len(v) for k, v in parts.items()} == {"train": 56_250, "val": 18_750,
                                                     "test": 25_000}
    for idx in parts.values():
        assert labels[idx].mean() == 0.5


def test_partition_and_determinism():
    labels = np.array([0] * 70 + [1] * 30)
    a = split_indices(labels, seed=3)
    b = split_indices(labels, seed=3)
    c = split_indices(labels, seed=4)
    together = np.concatenate(list(a.values()))
    np.testing.assert_array_equal(np.sort(together), np.arange(100))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        # 30 % real in every split, to within one stamp
        assert abs(labels[a[name]].sum() - 0.3 * len(a[name])) <= 1
    assert not np.array_equal(a["test"], c["test"])


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="all 40 stamps are of class 1: the split needs"):
        split_indices(np.ones(40, int), seed=0)


def test_too_few_stamps_for_every_split_to_hold_both_classes_are_refused():
    # val is 0.75 * 0.25 = 18.75 % of the stamps: with 3 of each class it cannot hold both
    labels = np.array([0, 1] * 3)
    with pytest.raises(ValueError, match=r"6 stamps \(3 of class 0, 3 of class 1\) are too "
                                         r"few .* about 6 stamps of each class"):
        split_indices(labels, seed=0)
    # 8 of each: every split holds both classes, by hand (train 9, val 3, test 4)
    splits = split_indices(np.array([0, 1] * 8), seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [9, 3, 4]
    labels = np.array([0, 1] * 8)
    assert all(set(labels[idx]) == {0, 1} for idx in splits.values())

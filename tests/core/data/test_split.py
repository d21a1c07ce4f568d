"""The stratified split: the study's exact sizes, stratification, a partition, determinism."""

from __future__ import annotations

import numpy as np

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

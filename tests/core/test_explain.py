"""Stamps entering the explainers: shape, numbers, and the [0, 1] range of min-max
normalised stamps (counted by hand on small arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.explain import check_stamps
from pipeline.core.geometry import RANGE_TOLERANCE


def _stamps(n=3):
    return np.linspace(0.0, 1.0, n * 2 * 2 * 1, dtype=np.float32).reshape(n, 2, 2, 1)


def test_stamps_in_range_pass_and_float_rounding_is_tolerated():
    stamps = _stamps()
    stamps[0, 0, 0, 0] = -RANGE_TOLERANCE / 2
    stamps[2, 1, 1, 0] = 1 + RANGE_TOLERANCE / 2
    np.testing.assert_array_equal(check_stamps(stamps, (2, 2, 1)), stamps)


def test_values_outside_the_unit_range_are_counted_and_located():
    stamps = _stamps()
    stamps[1, 0, 1, 0] = 2.0
    stamps[2, 0, 0, 0] = -0.5
    stamps[2, 1, 0, 0] = 255.0
    # 3 values in stamps 1 and 2 of 3; the first offending stamp is 1
    with pytest.raises(ValueError, match=r"^batch\.npz: 3 values in 2 of 3 stamps lie outside "
                                         r"\[0, 1\] \(first in stamp 1; values range "
                                         r"\[-0\.5, 255\]\)"):
        check_stamps(stamps, (2, 2, 1), source="batch.npz")
    np.testing.assert_array_equal(
        check_stamps(stamps, (2, 2, 1), allow_out_of_range=True), stamps)

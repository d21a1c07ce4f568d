"""The stamp geometry: one definition, read from data or a model's input."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.geometry import HITS, StampGeometry


def test_hits_geometry_by_hand():
    assert HITS.shape == (21, 21, 4) and HITS.map_shape == (21, 21) and HITS.pixels == 441
    assert HITS.centre == (10.0, 10.0)
    assert HITS.channel_indices(["snr_difference"]) == (3,)
    assert HITS.channel_indices([0, "difference"]) == (0, 2)
    assert HITS.classes == ("bogus", "real")


def test_from_stamps_names_the_channels():
    three = StampGeometry.from_stamps(np.zeros((2, 31, 31, 3)),
                                      ["template", "science", "difference"])
    assert three.shape == (31, 31, 3) and three.centre == (15.0, 15.0)
    assert three.channel_indices(["difference"]) == (2,)
    assert StampGeometry.from_stamps(np.zeros((1, 21, 21, 4))) == HITS
    assert StampGeometry.from_stamps(np.zeros((1, 5, 7, 2))).channels == ("channel_0",
                                                                          "channel_1")
    assert StampGeometry.from_input_shape((None, 31, 31, 3)).shape == (31, 31, 3)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: HITS.channel_indices(["snr"]), "unknown channel 'snr'"),
    (lambda: HITS.channel_indices([4]), "channel index 4 is outside"),
    (lambda: HITS.channel_indices([1, 1]), "without repeats"),
    (lambda: HITS.channel_indices([]), "non-empty"),
    (lambda: StampGeometry.from_stamps(np.zeros((1, 21, 21, 3)), ["a", "b"]),
     "2 channel names"),
    (lambda: StampGeometry.from_stamps(np.zeros((21, 21, 3))), r"\(N, H, W, C\)"),
    (lambda: StampGeometry(channels=("a", "a")), "distinct"),
])
def test_bad_geometry_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()

"""The synthetic twin: format, determinism, kinds, evidence masks, label noise, ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.data import synthetic
from pipeline.core.data.stats import calibration_figures, centre_offset, describe_stamps
from pipeline.core.data.synthetic import CHANNELS, KINDS, accuracy_ceiling, make_stamps

POINT_KINDS = ("real", "point_like", "negative_point", "variable_star")


def test_shapes_dtypes_and_range(stamps_all_kinds):
    images, labels, meta = stamps_all_kinds
    n = 400
    assert images.shape == (n, 21, 21, 4) and images.dtype == np.float32
    assert labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= {0, 1}
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert meta["evidence"].shape == (n, 21, 21) and meta["evidence"].dtype == bool
    for key in ("kind", "snr", "fwhm_template", "fwhm_science", "host", "event_x", "event_y",
                "label_flipped"):
        assert meta[key].shape == (n,), key
    assert np.isfinite(meta["snr"]).all()


def test_each_channel_is_min_max_normalised(stamps_all_kinds):
    images = stamps_all_kinds[0]
    lo = images.min(axis=(1, 2))
    hi = images.max(axis=(1, 2))
    constant = hi == 0
    assert np.allclose(lo, 0.0)
    assert np.allclose(hi[~constant], 1.0)


def test_minmax_normalise_by_hand():
    stamp = np.zeros((1, 2, 2, 2), np.float32)
    stamp[0, :, :, 0] = [[2.0, 4.0], [6.0, 10.0]]
    stamp[0, :, :, 1] = 5.0  # constant channel -> 0
    out = synthetic.minmax_normalise(stamp)
    np.testing.assert_allclose(out[0, :, :, 0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(out[0, :, :, 1], 0.0)


def test_deterministic_for_a_seed():
    a = make_stamps(40, seed=11, preset="hits")
    b = make_stamps(40, seed=11, preset="hits")
    c = make_stamps(40, seed=12, preset="hits")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for key in a[2]:
        np.testing.assert_array_equal(a[2][key], b[2][key])
    assert not np.array_equal(a[0], c[0])


def test_class_balance_and_every_kind(stamps_all_kinds):
    _, _, meta = stamps_all_kinds
    kinds = meta["kind"]
    assert (kinds == "real").sum() == 200
    counts = {k: int((kinds == k).sum()) for k in KINDS}
    assert all(c > 0 for c in counts.values()), counts
    shares = synthetic.bogus_shares(synthetic.resolve_config("default"))
    for kind, share in shares.items():
        assert abs(counts[kind] - 200 * share) <= 1, (kind, counts[kind], 200 * share)


def test_odd_n_and_labels_follow_kinds_without_label_noise():
    images, labels, meta = make_stamps(31, seed=2, preset="default", label_noise=0.0)
    assert len(images) == 31
    assert (labels == 1).sum() == 15
    np.testing.assert_array_equal(labels, (meta["kind"] == "real").astype(int))
    assert not meta["label_flipped"].any()


def test_label_noise_flips_the_given_share():
    _, labels, meta = make_stamps(2000, seed=5, preset="default", label_noise=0.2)
    flipped = meta["label_flipped"]
    assert abs(flipped.mean() - 0.2) < 0.03
    np.testing.assert_array_equal(labels, ((meta["kind"] == "real") ^ flipped).astype(int))


def test_evidence_masks_are_non_empty_and_where_the_event_is(stamps_all_kinds):
    _, _, meta = stamps_all_kinds
    evidence = meta["evidence"]
    assert evidence.any(axis=(1, 2)).all()
    col = np.rint(meta["event_x"]).astype(int)
    row = np.rint(meta["event_y"]).astype(int)
    assert ((row >= 0) & (row < 21) & (col >= 0) & (col < 21)).all()
    rows, cols = np.mgrid[:21, :21]
    for i in range(len(evidence)):
        distance = np.maximum(np.abs(rows - row[i]), np.abs(cols - col[i]))[evidence[i]]
        if meta["kind"][i] in POINT_KINDS:
            # a point source: its own pixel is evidence
            assert evidence[i, row[i], col[i]], (i, meta["kind"][i])
        assert distance.min() <= 3, (i, meta["kind"][i])
    # Context is not evidence: a real stamp's mask is a compact blob, not the whole stamp.
    real = meta["kind"] == "real"
    assert evidence[real].sum(axis=(1, 2)).max() < 0.5 * 21 * 21


def test_snr_signs_follow_the_kind(stamps_all_kinds):
    _, _, meta = stamps_all_kinds
    snr, kind = meta["snr"], meta["kind"]
    assert (snr[kind == "real"] > 0).mean() > 0.97
    assert (snr[kind == "negative_point"] < 0).mean() > 0.97
    assert (np.abs(snr) >= synthetic.resolve_config("default").min_snr).all()


def test_real_events_are_centred():
    images, _, meta = make_stamps(600, seed=9, preset="hits")
    figures = calibration_figures(images, np.zeros(600, int), meta)
    assert figures["real_diff_max_within_1px"] >= 0.95
    assert abs(figures["bogus_negative_share"] - 0.305) <= 0.05


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"label_noise": 0.0, "point_like_share": 0.0}, 1.0),
        ({"label_noise": 0.0, "point_like_share": 0.02}, 0.99),  # half of 2 % of bogus
        ({"label_noise": 0.1, "point_like_share": 0.0}, 0.9),
        ({"label_noise": 0.1, "point_like_share": 0.05}, 1 - 0.1 - 0.5 * 0.05 * 0.8),
    ],
)
def test_accuracy_ceiling_closed_form(overrides, expected):
    assert accuracy_ceiling("default", **overrides) == pytest.approx(expected)


def test_presets_order_by_difficulty():
    ceilings = [accuracy_ceiling(p) for p in ("hits", "default", "hard")]
    assert ceilings == sorted(ceilings, reverse=True)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="unknown preset"):
        make_stamps(4, preset="nope")
    with pytest.raises(ValueError, match="unknown generator setting"):
        make_stamps(4, snr_scal=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        make_stamps(0)
    with pytest.raises(ValueError, match="label_noise"):
        make_stamps(4, label_noise=0.7)


def test_larger_stamps_with_three_channels():
    channels = ("template", "science", "difference")
    n = 300
    images, labels, meta = make_stamps(n, seed=4, preset="default", stamp_size=31,
                                       channels=channels)
    assert images.shape == (n, 31, 31, 3) and images.dtype == np.float32
    assert meta["evidence"].shape == (n, 31, 31) and meta["evidence"].dtype == bool
    lo, hi = images.min(axis=(1, 2)), images.max(axis=(1, 2))
    assert np.allclose(lo, 0.0)
    assert np.allclose(hi[hi != 0], 1.0)
    # The candidate is the centre pixel (15, 15); events sit within the re-centring radius.
    assert (np.abs(meta["event_x"] - 15) <= 4).all() and (np.abs(meta["event_y"] - 15) <= 4).all()
    real = meta["kind"] == "real"
    assert (centre_offset(images[real], channels.index("difference")) <= 1).mean() >= 0.9
    assert (meta["snr"][real] > 0).mean() > 0.97
    assert describe_stamps(images, labels, channel_names=channels)["channel_mean"].keys() == set(
        channels)


def test_selecting_channels_equals_slicing_the_full_output():
    full = make_stamps(60, seed=3, preset="default")
    chosen = ("snr_difference", "template")
    part = make_stamps(60, seed=3, preset="default", channels=chosen)
    np.testing.assert_array_equal(part[0], full[0][..., [CHANNELS.index(c) for c in chosen]])
    np.testing.assert_array_equal(part[1], full[1])
    for key in full[2]:
        np.testing.assert_array_equal(part[2][key], full[2][key])


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"stamp_size": 20}, "stamp_size"),
        ({"stamp_size": 9}, "stamp_size"),
        ({"stamp_size": 21.0}, "stamp_size"),
        ({"stamp_size": True}, "stamp_size"),
        ({"channels": ("science", "sky")}, "channels"),
        ({"channels": ("science", "science")}, "channels"),
        ({"channels": ()}, "channels"),
        ({"channels": "science"}, "channels"),
    ],
)
def test_bad_stamp_options_raise(options, option):
    with pytest.raises(ValueError, match=option):
        make_stamps(4, **options)


def test_cosmic_rays_and_noise_excursions_are_pixel_scale():
    # Worked out from the kinds' geometry. A cosmic ray (added after PSF matching, never
    # blurred) is the pixels within 0.55 px of a segment of at most 5 px: an area of
    # 5 * 1.1 + pi * 0.55**2 = 6.5 px^2, so a dozen pixels at most; the same ray blurred by
    # even the sharpest seeing (FWHM 3.3 px, sigma 1.40) would spread its 20 %-of-peak
    # evidence over pi * (1.40 * sqrt(2 ln 5))**2 = 20 px or more.
    # A noise excursion's three lumps are at most 0.2 PSF sigma wide (x2 stretched): at the
    # median seeing (sigma 2.04 px) each lump's 20 % contour is an ellipse of semi-axes
    # <= 1.79 * 0.41 * (2, 1) px, ~3.4 px^2, so ~10 px for the three; a real point source's
    # is a disc of radius 1.79 * 2.04 = 3.7 px, ~42 px.
    _, _, meta = make_stamps(3000, seed=11, preset="hits")
    area = meta["evidence"].sum(axis=(1, 2))
    kind = meta["kind"]
    assert area[kind == "cosmic_ray"].max() <= 12
    assert np.median(area[kind == "noise_excursion"]) <= 10
    assert np.median(area[kind == "real"]) >= 30


def test_bogus_mix_keeps_the_real_sets_negative_share():
    # 30.5 % of the real set's bogus have a negative SNR (hits-synthetic.md); the mix and
    # the kinds' negative shares are set to hold it: the expected share is
    # sum(share_k * negative_k) + 1 * negative_point, worked out from config alone ...
    from pipeline.core.data.synthetic.config import PRESETS, bogus_shares

    cfg = PRESETS["hits"]
    shares = bogus_shares(cfg)
    expected = shares["negative_point"] + sum(
        shares[kind] * share for kind, share in cfg.negative_share.items())
    # ... and, measured, the candidate's sign follows (a dipole's larger lobe may flip it)
    images, labels, meta = make_stamps(6000, seed=12, preset="hits")
    measured = float((meta["snr"][labels == 0] < 0).mean())
    assert abs(expected - 0.305) <= 0.05
    assert abs(measured - 0.305) <= 0.03

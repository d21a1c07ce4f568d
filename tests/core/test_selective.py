"""Choosing maps to recompute exactly, and judging a doubt score: values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import selective

# Six maps: four non-trivial (r 0.5, 0.85, 0.95, 0.99), two trivial (r not judged).
R = np.array([0.5, 0.85, 0.95, 0.99, np.nan, 0.2])
NON_TRIVIAL = np.array([True, True, True, True, False, False])


def test_rows_to_recompute_takes_the_share_of_highest_doubt_or_those_above_a_maximum():
    doubt = np.array([0.1, 0.9, 0.5, 0.9, 0.0, 0.3])
    # ceil(0.34 x 6) = 3 rows: the two 0.9s (earlier row first), then 0.5
    assert selective.rows_to_recompute(doubt, share=0.34).tolist() == [
        False, True, True, True, False, False]
    # ceil(0.2 x 6) = ceil(1.2) = 2 rows: the two 0.9s
    assert selective.rows_to_recompute(doubt, share=0.2).tolist() == [
        False, True, False, True, False, False]
    assert not selective.rows_to_recompute(doubt, share=0).any()
    assert selective.rows_to_recompute(doubt, share=1).all()
    assert selective.rows_to_recompute(doubt, max_doubt=0.3).tolist() == [
        False, True, True, True, False, False]


def test_bad_shares_and_both_flags_are_refused():
    doubt = np.zeros(3)
    for share in (1.5, -0.1, "half"):
        with pytest.raises(ValueError, match="exact share"):
            selective.rows_to_recompute(doubt, share=share)
    with pytest.raises(ValueError, match="exactly one"):
        selective.rows_to_recompute(doubt, share=0.1, max_doubt=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        selective.rows_to_recompute(doubt)


def test_delivered_figures_by_hand():
    none = np.zeros(6, bool)
    before = selective.delivered_figures(R, NON_TRIVIAL, none)
    # non-trivial r: 0.5, 0.85, 0.95, 0.99 -> median 0.9, two below 0.9 of four
    assert before["n"] == 4 and before["bad"] == 2 and before["bad_share"] == 0.5
    assert before["median_r"] == pytest.approx(0.9)
    # numpy's linear percentile: 1st percentile of 4 values = 0.5 + 0.03 x (0.85 - 0.5)
    assert before["p1_r"] == pytest.approx(0.5 + 0.03 * 0.35)
    after = selective.delivered_figures(R, NON_TRIVIAL, np.array([1, 0, 0, 0, 1, 1], bool))
    # row 0 delivered exact (r 1): 1, 0.85, 0.95, 0.99; the trivial rows change nothing
    assert after["bad"] == 1 and after["bad_share"] == 0.25 and after["recomputed"] == 3
    assert after["median_r"] == pytest.approx(0.97)


def test_a_constant_estimate_of_a_non_trivial_map_counts_as_bad():
    figures = selective.delivered_figures(np.array([np.nan, 0.99]), np.array([True, True]),
                                          np.zeros(2, bool))
    assert figures["bad"] == 1


def test_risk_coverage_area_by_hand():
    error = np.array([0.0, 0.3, 0.1])
    # keep order by score: rows 0, 2, 1 -> risks 0, 0.05, 0.1333 -> mean 0.06111
    assert selective.risk_coverage_area(error, np.array([0.0, 2.0, 1.0])) == pytest.approx(
        (0 + 0.05 + 0.4 / 3) / 3)
    # the oracle (score = error) is never worse than any other order
    assert selective.risk_coverage_area(error, error) <= selective.risk_coverage_area(
        error, np.array([2.0, 0.0, 1.0]))


def test_report_with_a_perfect_doubt_matches_the_oracle():
    error = selective.error_of(R, NON_TRIVIAL)
    assert error.tolist() == pytest.approx([0.5, 0.15, 0.05, 0.01, 0.0, 0.0])
    report = selective.selective_report(R, NON_TRIVIAL, doubt=error,
                                        true_class=np.array([0, 1, 0, 1, 0, 1]),
                                        exact_share=0.2)
    # ceil(0.2 x 6) = 2 recomputed: rows 0 and 1, the two bad ones -> none bad after
    assert report["bad_share_estimate"] == 0.5 and report["bad_share_delivered"] == 0.0
    assert report["bad_reduction"] is None  # nothing left to divide by
    assert report["spearman_doubt_error"] == pytest.approx(1.0)
    assert report["aurc"]["doubt"] == pytest.approx(report["aurc"]["oracle"])
    assert report["operating_point"]["doubt"]["bogus"]["bad"] == 0
    curve = report["curves"]["doubt"]
    assert curve[0]["share"] == 0.0 and curve[0]["bad_share"] == 0.5
    assert curve[-1]["share"] == 1.0 and curve[-1]["median_r"] == 1.0
    # the reverse order recomputes the good maps first
    worst = selective.selective_report(R, NON_TRIVIAL, doubt=-error,
                                       true_class=np.zeros(6, int), exact_share=0.2)
    assert worst["spearman_doubt_error"] == pytest.approx(-1.0)
    assert worst["bad_share_delivered"] == 0.5

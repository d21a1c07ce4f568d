"""Selective explanation: which estimated maps to recompute exactly, and how much that buys.

An estimator delivers one map per stamp with a doubt score (higher: less to be trusted).
The maps of the highest doubt are recomputed by the exact engine and delivered exact in
their place. These pure functions choose those rows and judge the doubt the way
"Selective Explanations" (NeurIPS 2024) judges its uncertainty: the fidelity of the
delivered maps against the share recomputed, for the doubt's order beside the oracle's
(the true error) and a random one; the area under the risk-coverage curve; and the rank
correlation of doubt with the true error.

Fidelity per map is the Pearson r of the estimate with the exact map (``fidelity.pearson_r``),
judged on the non-trivial maps (``fidelity.NON_TRIVIAL``) as everywhere in the project. A
map is BAD where it is non-trivial and r < ``BAD_R`` (an estimate that is constant where the
exact map is not has no r and counts as r = 0). Arrays: ``r``, ``doubt``, ``non_trivial``
(N,); shares in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.core import fidelity

BAD_R = 0.9  # a non-trivial map below this r is "bad"
EXACT_SHARE = 0.05  # the default operating point: 5 % of the maps recomputed exactly
SHARES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
PERCENTILES = (1.0, 0.1)


def check_share(share: float, name: str = "exact share") -> float:
    """``share`` as a float in [0, 1]; ``ValueError`` naming ``name`` otherwise."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {share!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {share!r}")
    return value


def recompute_count(n: int, share: float) -> int:
    """How many of ``n`` maps a share recomputes: ceil(share x n) (a product that float
    rounding puts a hair above a whole number is not rounded up), so share 1 recomputes
    all of them and share 1/n exactly one."""
    return min(n, math.ceil(check_share(share) * n - 1e-9))


def rows_to_recompute(doubt: np.ndarray, share: float | None = None,
                      max_doubt: float | None = None) -> np.ndarray:
    """(N,) bool: the rows to recompute exactly, either the ``share`` of the rows with
    the highest doubt (ties: the earlier row first) or the rows whose doubt exceeds
    ``max_doubt``; exactly one of the two must be given."""
    doubt = np.asarray(doubt, np.float64)
    if (share is None) == (max_doubt is None):
        raise ValueError("give exactly one of an exact share and a maximum doubt")
    if np.isnan(doubt).any():
        raise ValueError("doubt holds NaN")
    chosen = np.zeros(len(doubt), bool)
    if max_doubt is not None:
        chosen[doubt > float(max_doubt)] = True
        return chosen
    chosen[np.argsort(-doubt, kind="stable")[:recompute_count(len(doubt), share)]] = True
    return chosen


def judged_r(r: np.ndarray, non_trivial: np.ndarray) -> np.ndarray:
    """(N,) r as judged: NaN (a constant estimate) counts as 0 on non-trivial maps."""
    r = np.asarray(r, np.float64)
    return np.where(np.asarray(non_trivial) & np.isnan(r), 0.0, r)


def error_of(r: np.ndarray, non_trivial: np.ndarray) -> np.ndarray:
    """(N,) the true error a doubt should rank: 1 - r on non-trivial maps, 0 on the
    trivial ones (whose r is not judged)."""
    return np.where(np.asarray(non_trivial), 1.0 - judged_r(r, non_trivial), 0.0)


def map_errors(estimate: np.ndarray, exact: np.ndarray) -> dict[str, np.ndarray]:
    """Per-map judgement of ``estimate`` against ``exact`` (both (N, H, W) raw maps):
    {"r": (N,) Pearson r (NaN where either is constant), "non_trivial": (N,) bool
    (exact amplitude >= ``fidelity.NON_TRIVIAL`` and not constant, as in
    ``fidelity.fidelity_report``), "error": (N,) ``error_of`` in [0, 2]}."""
    r = fidelity.pearson_r(estimate, exact)
    non_trivial = (fidelity.amplitude(exact) >= fidelity.NON_TRIVIAL) & \
        ~fidelity.is_constant(exact)
    return {"r": r, "non_trivial": non_trivial, "error": error_of(r, non_trivial)}


def delivered_figures(r: np.ndarray, non_trivial: np.ndarray, recomputed: np.ndarray) -> dict:
    """Fidelity of the delivered maps (the estimate, or the exact map, r = 1, where
    ``recomputed``) over the non-trivial ones: n, median r, the 1st and 0.1th percentile
    of r, and the share of bad maps (of the non-trivial maps)."""
    non_trivial = np.asarray(non_trivial, bool)
    delivered = np.where(np.asarray(recomputed, bool), 1.0, judged_r(r, non_trivial))
    picked = delivered[non_trivial]
    out = {"n": int(len(picked)), "recomputed": int(np.asarray(recomputed).sum())}
    if not len(picked):
        return {**out, "median_r": None, "p1_r": None, "p0_1_r": None, "bad_share": None,
                "bad": 0}
    bad = int((picked < BAD_R).sum())
    return {**out, "median_r": float(np.median(picked)),
            "p1_r": float(np.percentile(picked, PERCENTILES[0])),
            "p0_1_r": float(np.percentile(picked, PERCENTILES[1])),
            "bad": bad, "bad_share": bad / len(picked)}


def orders(r: np.ndarray, non_trivial: np.ndarray, doubt: np.ndarray, seed: int = 0) -> dict:
    """Scores whose descending order is each policy's order of recomputation: ``doubt``
    itself, ``oracle`` (the true error, ``error_of``) and ``random`` (a seeded
    permutation)."""
    rng = np.random.default_rng(seed)
    return {"doubt": np.asarray(doubt, np.float64), "oracle": error_of(r, non_trivial),
            "random": rng.permutation(len(doubt)).astype(np.float64)}


def selective_curves(r: np.ndarray, non_trivial: np.ndarray, scores: dict[str, np.ndarray],
                     shares=SHARES) -> dict:
    """{policy: [``delivered_figures`` with ``share``, for each share]}: the fidelity of
    the delivered maps as the share recomputed grows, each policy recomputing in the
    descending order of its score."""
    return {name: [{"share": float(share),
                    **delivered_figures(r, non_trivial, rows_to_recompute(score, share))}
                   for share in shares]
            for name, score in scores.items()}


def risk_coverage_area(error: np.ndarray, score: np.ndarray) -> float:
    """Area under the risk-coverage curve: keep the maps of lowest ``score`` first; at
    coverage i/N the risk is the mean ``error`` of the i kept maps; the area is the mean
    of the risks over i = 1..N (lower is better; the oracle's order gives the least)."""
    error = np.asarray(error, np.float64)
    if not len(error):
        return float("nan")
    kept = error[np.argsort(np.asarray(score, np.float64), kind="stable")]
    risks = np.cumsum(kept) / np.arange(1, len(kept) + 1)
    return float(risks.mean())


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two (N,) arrays (average ranks for ties); None
    for fewer than 3 values or a constant one."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def selective_report(r: np.ndarray, non_trivial: np.ndarray, doubt: np.ndarray,
                     true_class: np.ndarray, exact_share: float = EXACT_SHARE,
                     shares=SHARES, seed: int = 0, class_names=("bogus", "real")) -> dict:
    """Everything evaluate records on the doubt (section ``selective``).

    Keys: ``exact_share`` (the operating point), ``bad_share_estimate`` (non-trivial maps
    with r < ``BAD_R``, estimate only), ``bad_share_delivered`` (after recomputing the
    ``exact_share`` of highest doubt), ``bad_reduction`` (their ratio; None where
    nothing is bad after), ``bad_estimate`` / ``bad_delivered`` (the same as counts),
    ``p0_1_r_estimate`` / ``p0_1_r_delivered``, ``spearman_doubt_error`` (over the
    non-trivial maps), ``aurc`` per policy, ``operating_point`` (per policy, overall and
    per true class) and ``curves`` (per policy, ``selective_curves``)."""
    non_trivial = np.asarray(non_trivial, bool)
    true_class = np.asarray(true_class)
    scores = orders(r, non_trivial, doubt, seed)
    error = error_of(r, non_trivial)
    estimate_only = delivered_figures(r, non_trivial, np.zeros(len(r), bool))
    operating = {}
    for name, score in scores.items():
        chosen = rows_to_recompute(score, exact_share)
        operating[name] = {"all": delivered_figures(r, non_trivial, chosen)} | {
            label: delivered_figures(r[true_class == c], non_trivial[true_class == c],
                                     chosen[true_class == c])
            for c, label in enumerate(class_names)}
    before, after = estimate_only["bad_share"], operating["doubt"]["all"]["bad_share"]
    return {
        "exact_share": float(exact_share),
        "bad_r": BAD_R,
        "n": int(len(r)), "n_non_trivial": int(non_trivial.sum()),
        "bad_share_estimate": before,
        "bad_share_delivered": after,
        "bad_reduction": (before / after if before is not None and after else None),
        "bad_estimate": estimate_only["bad"],
        "bad_delivered": operating["doubt"]["all"]["bad"],
        "p0_1_r_estimate": estimate_only["p0_1_r"],
        "p0_1_r_delivered": operating["doubt"]["all"]["p0_1_r"],
        "spearman_doubt_error": spearman(np.asarray(doubt)[non_trivial], error[non_trivial]),
        # every score recomputes in descending order, so keeps in ascending order
        "aurc": {name: risk_coverage_area(error, score) for name, score in scores.items()},
        "operating_point": operating,
        "curves": selective_curves(r, non_trivial, scores, shares),
    }

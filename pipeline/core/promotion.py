"""The promotion rule: may a newly trained (classifier, estimator) pair replace the champion?

Pure: figures in, decision out; the ``promote`` stage reads the figures from
``metrics/evaluate.json`` and the registry, and moves the aliases.

The two models are judged as one pair because the estimator's explainer embeds the
classifier it was trained to explain: a champion estimator beside another champion
classifier would explain decisions that classifier never makes.

Figures (all from the evaluate stage, test split):
- ``accuracy``: the classifier's accuracy in [0, 1];
- ``real_median_r`` / ``bogus_median_r``: median Pearson r of estimated vs exact maps over
  the non-trivial maps of each true class, in [-1, 1] (None when a class has none);
- ``real_mean_ssim`` / ``bogus_mean_ssim``: mean SSIM over the same maps, in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

FIDELITY_FIGURES = ("real_median_r", "bogus_median_r", "real_mean_ssim", "bogus_mean_ssim")
FIGURES = ("accuracy", *FIDELITY_FIGURES)
PROMOTED, REJECTED = "promoted", "rejected"


@dataclass(frozen=True)
class PromotionRule:
    """Thresholds of the rule (params.yaml section ``promote``).

    min_median_r, min_mean_ssim: the floor every candidate estimator must reach in EACH
    true class; fidelity_margin: how far below the champion each fidelity figure may fall;
    accuracy_margin: how far below the champion's accuracy the classifier may fall.
    """

    min_median_r: float = 0.95
    min_mean_ssim: float = 0.9
    fidelity_margin: float = 0.01
    accuracy_margin: float = 0.005

    @classmethod
    def from_dict(cls, raw: Mapping) -> PromotionRule:
        allowed = set(cls.__dataclass_fields__)
        if not isinstance(raw, Mapping):
            raise ValueError(f"params section 'promote' must be a mapping, got "
                             f"{type(raw).__name__}")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in params section 'promote'; "
                             f"allowed: {sorted(allowed)}")
        rule = cls(**{name: float(value) for name, value in raw.items()})
        if min(rule.fidelity_margin, rule.accuracy_margin) < 0:
            raise ValueError("promote.fidelity_margin and promote.accuracy_margin must be >= 0")
        return rule


@dataclass(frozen=True)
class Check:
    """One comparison: ``figure`` of the candidate against ``threshold``."""

    name: str  # e.g. "floor:bogus_median_r" or "champion:accuracy"
    candidate: float | None
    threshold: float | None
    passed: bool
    why: str


@dataclass(frozen=True)
class Decision:
    decision: str  # PROMOTED | REJECTED
    reason: str
    forced: bool = False  # a person overruled a rejection
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(candidate: Mapping[str, float | None], champion: Mapping[str, float | None] | None,
           rule: PromotionRule, *, force: bool = False) -> Decision:
    """Judge ``candidate`` figures (keys ``FIGURES``) against the floor of ``rule`` and,
    when there is one, against the ``champion``'s figures.

    Missing or None figures fail their check (fail closed: an unmeasured class is not a
    proof of fidelity). ``force`` turns a rejection into a promotion, recorded as forced.
    """
    checks = []
    for figure in FIDELITY_FIGURES:
        floor = rule.min_median_r if figure.endswith("median_r") else rule.min_mean_ssim
        checks.append(_at_least(f"floor:{figure}", candidate.get(figure), floor,
                                f"the floor {floor:g}"))
    if champion is not None:
        margins = {figure: rule.fidelity_margin for figure in FIDELITY_FIGURES}
        margins["accuracy"] = rule.accuracy_margin
        for figure, margin in margins.items():
            reference = champion.get(figure)
            if reference is None:
                checks.append(Check(f"champion:{figure}", candidate.get(figure), None, False,
                                    f"the champion has no recorded {figure} to compare with"))
                continue
            checks.append(_at_least(f"champion:{figure}", candidate.get(figure),
                                    reference - margin,
                                    f"the champion's {reference:.4f} - margin {margin:g}"))
    failed = [check for check in checks if not check.passed]
    if not failed:
        reason = ("within the margins of the champion and above the floor" if champion
                  is not None else "no champion yet; above the floor")
        return Decision(PROMOTED, reason, False, checks)
    failures = "; ".join(check.why for check in failed)
    if force:
        return Decision(PROMOTED, f"forced over the rule's rejection: {failures}", True, checks)
    return Decision(REJECTED, failures, False, checks)


def _at_least(name: str, value: float | None, threshold: float, what: str) -> Check:
    if value is None:
        return Check(name, None, threshold, False, f"{name.split(':')[1]} was not measured")
    passed = value >= threshold
    relation = ">=" if passed else "<"
    return Check(name, float(value), threshold, passed,
                 f"{name.split(':')[1]} {value:.4f} {relation} {what}")

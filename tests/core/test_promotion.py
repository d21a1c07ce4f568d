"""The promotion rule: pure, figures in, decision out (the stage: tests/stages/test_promote.py)."""

from __future__ import annotations

import pytest

from pipeline.core.promotion import PROMOTED, REJECTED, PromotionRule, decide

RULE = PromotionRule(min_median_r=0.95, min_mean_ssim=0.9, fidelity_margin=0.01,
                     accuracy_margin=0.005)
GOOD = {"accuracy": 0.93, "real_median_r": 0.99, "bogus_median_r": 0.97,
        "real_mean_ssim": 0.98, "bogus_mean_ssim": 0.95}


def test_first_run_meeting_the_floor_is_promoted():
    decision = decide(GOOD, None, RULE)
    assert decision.decision == PROMOTED and not decision.forced
    assert "no champion" in decision.reason
    assert [c.name for c in decision.checks] == [
        "floor:real_median_r", "floor:bogus_median_r", "floor:real_mean_ssim",
        "floor:bogus_mean_ssim"]


def test_first_run_below_the_floor_is_rejected_naming_the_figure():
    decision = decide(GOOD | {"bogus_median_r": 0.54}, None, RULE)
    assert decision.decision == REJECTED
    assert decision.reason == "bogus_median_r 0.5400 < the floor 0.95"


def test_unmeasured_class_fails_closed():
    decision = decide(GOOD | {"bogus_mean_ssim": None}, None, RULE)
    assert decision.decision == REJECTED and "bogus_mean_ssim was not measured" in decision.reason


def test_better_than_champion_is_promoted():
    champion = GOOD | {"bogus_median_r": 0.96, "accuracy": 0.92}
    decision = decide(GOOD, champion, RULE)
    assert decision.decision == PROMOTED and "margins of the champion" in decision.reason
    assert len(decision.checks) == 4 + 5


def test_worse_than_champion_beyond_the_margin_is_rejected():
    champion = GOOD | {"bogus_median_r": 0.99}
    decision = decide(GOOD, champion, RULE)  # 0.97 < 0.99 - 0.01
    assert decision.decision == REJECTED
    assert decision.reason == "bogus_median_r 0.9700 < the champion's 0.9900 - margin 0.01"
    # the classifier alone: 0.5 points of accuracy lost is the margin, 0.6 is beyond it
    assert decide(GOOD | {"accuracy": 0.925}, GOOD, RULE).decision == PROMOTED
    lost = decide(GOOD | {"accuracy": 0.924}, GOOD, RULE)
    assert lost.decision == REJECTED and lost.reason.startswith("accuracy 0.9240 <")


def test_worse_within_the_margin_is_promoted():
    champion = GOOD | {"real_median_r": 0.995, "bogus_mean_ssim": 0.955}
    assert decide(GOOD, champion, RULE).decision == PROMOTED


def test_forced_promotion_records_what_the_rule_said():
    decision = decide(GOOD | {"real_mean_ssim": 0.5}, GOOD, RULE, force=True)
    assert decision.decision == PROMOTED and decision.forced
    assert decision.reason.startswith("forced over the rule's rejection: real_mean_ssim 0.5000")
    # forcing a pair the rule accepts is no overruling
    assert not decide(GOOD, None, RULE, force=True).forced


def test_champion_without_recorded_figures_is_not_beaten_silently():
    decision = decide(GOOD, {k: None for k in GOOD}, RULE)
    assert decision.decision == REJECTED
    assert "the champion has no recorded accuracy" in decision.reason


def test_rule_params_are_checked():
    assert PromotionRule.from_dict({"min_median_r": 0.9}).min_median_r == 0.9
    with pytest.raises(ValueError, match="unknown key.*'floor'"):
        PromotionRule.from_dict({"floor": 1})
    with pytest.raises(ValueError, match="must be >= 0"):
        PromotionRule.from_dict({"accuracy_margin": -0.1})


# --- the stage's glue in a temporary registry -----------------------------------------

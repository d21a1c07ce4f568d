"""The promotion rule (pure), the promote stage's alias moves in a temporary registry, and
the stage end to end after the tiny chain's evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

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

@pytest.fixture
def project(tmp_path, monkeypatch, repo_root):
    """A project directory with params.yaml, a test split and an empty registry; returns a
    function that registers a new model pair with the given figures and runs the stage."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["promote"] = {"min_median_r": 0.5, "min_mean_ssim": 0.5, "fidelity_margin": 0.01,
                         "accuracy_margin": 0.005}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    np.savez(tmp_path / "data" / "prepared" / "test.npz", images=np.zeros((2, 21, 21, 4)))
    (tmp_path / "metrics").mkdir()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    names = {"train_classifier": "hits-classifier", "train_estimator": "occlusion-estimator"}
    for name in names.values():
        client.create_registered_model(name)

    def promote(figures, *args):
        from pipeline import promote as stage

        judged = {}
        for step, name in names.items():
            version = client.create_model_version(name, source=tmp_path.as_uri())
            judged[step] = {"name": name, "version": int(version.version)}
        headline = {k: v for k, v in figures.items() if k != "accuracy"}
        (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(
            {"judged": judged, "classifier": {"accuracy": figures["accuracy"]},
             "fidelity": {"headline": headline}}))
        stage.main(list(args))
        return json.loads((tmp_path / "metrics" / "promote.json").read_text())

    return promote, client, tmp_path


def _aliases(client, name):
    return {alias: str(version)
            for alias, version in client.get_registered_model(name).aliases.items()}


def test_aliases_move_or_stay_in_a_registry(project):
    promote, client, tmp_path = project
    first = promote(GOOD)
    assert first["decision"] == "promoted" and first["champion"] is None
    for name in ("hits-classifier", "occlusion-estimator"):
        assert _aliases(client, name) == {"champion": "1"}
    tags = client.get_model_version("occlusion-estimator", "1").tags
    assert tags["promotion.decision"] == "promoted" and tags["eval.bogus_median_r"] == "0.970000"
    assert tags["paired_classifier_version"] == "1"
    assert client.get_model_version("hits-classifier", "1").tags["eval.accuracy"] == "0.930000"

    worse = promote(GOOD | {"bogus_median_r": 0.90})
    assert worse["decision"] == "rejected"
    assert worse["champion"]["figures"]["bogus_median_r"] == pytest.approx(0.97)
    for name in ("hits-classifier", "occlusion-estimator"):
        assert _aliases(client, name) == {"champion": "1", "challenger": "2"}
    assert "bogus_median_r 0.9000 < the champion's 0.9700" in client.get_model_version(
        "occlusion-estimator", "2").tags["promotion.reason"]

    within = promote(GOOD | {"real_median_r": 0.985})
    assert within["decision"] == "promoted"
    assert _aliases(client, "occlusion-estimator") == {"champion": "3", "challenger": "2"}
    assert within["aliases"]["occlusion-estimator"] == {"champion": "3", "challenger": "2"}

    from pipeline import promote as stage

    # a person overrules the rule for the rejected pair 2
    evaluate = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    for step in evaluate["judged"]:
        evaluate["judged"][step]["version"] = 2
    evaluate["fidelity"]["headline"]["bogus_median_r"] = 0.90
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(evaluate))
    stage.main(["--force", "--note", "checked the bogus maps by eye"])
    forced = json.loads((tmp_path / "metrics" / "promote.json").read_text())
    assert forced["decision"] == "promoted" and forced["forced"]
    for name in ("hits-classifier", "occlusion-estimator"):
        assert _aliases(client, name) == {"champion": "2"}
    tags = client.get_model_version("occlusion-estimator", "2").tags
    assert tags["promotion.forced"] == "true" and tags["promotion.force_note"] == (
        "checked the bogus maps by eye") and tags["promotion.forced_by"]

    # re-running the stage on the forced pair leaves it champion
    stage.main([])
    again = json.loads((tmp_path / "metrics" / "promote.json").read_text())
    assert again["decision"] == "promoted" and "already the champion" in again["reason"]
    assert _aliases(client, "occlusion-estimator") == {"champion": "2"}

    runs = client.search_runs([client.get_experiment_by_name("hits-occlusion").experiment_id],
                              filter_string="attributes.run_name = 'promote'")
    assert sorted(r.data.tags["decision"] for r in runs) == [
        "promoted", "promoted", "promoted", "promoted", "rejected"]


def test_stage_refuses_an_evaluate_file_without_versions(project):
    tmp_path = project[2]
    from pipeline import promote as stage

    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"classifier": {}}))
    with pytest.raises(ValueError, match="evaluate.json: no judged classifier version"):
        stage.main([])
    assert not (tmp_path / "metrics" / "promote.json").exists()


@pytest.mark.slow
def test_promote_stage_after_the_tiny_chain(tiny_champion):
    tmp_path, env = tiny_champion
    evaluate = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    headline = evaluate["fidelity"]["headline"]
    rule = yaml.safe_load((tmp_path / "params.yaml").read_text())["promote"]
    below = [k for k in ("real_median_r", "bogus_median_r") if headline[k] is None
             or headline[k] < rule["min_median_r"]]
    below += [k for k in ("real_mean_ssim", "bogus_mean_ssim") if headline[k] is None
              or headline[k] < rule["min_mean_ssim"]]
    # the first run, by the rule alone (no champion yet)
    by_rule = json.loads((tmp_path / "metrics" / "promote_rule.json").read_text())
    assert by_rule["decision"] == ("rejected" if below else "promoted")
    assert by_rule["champion"] is None and not by_rule["forced"]
    for figure in below:
        assert figure in by_rule["reason"]
    assert by_rule["candidate"]["versions"]["estimator"] == {"name": "occlusion-estimator",
                                                             "version": "1"}
    # then forced by a person: the pair is champion whatever the rule said
    forced = json.loads((tmp_path / "metrics" / "promote.json").read_text())
    assert forced["decision"] == "promoted" and forced["forced"] == bool(below)
    assert forced["aliases"] == {"hits-classifier": {"champion": "1", "challenger": None},
                                 "occlusion-estimator": {"champion": "1", "challenger": None}}

"""The promote stage: alias moves in a temporary registry, and the stage end to end after
the tiny chain's evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline.core.promotion import PromotionRule

RULE = PromotionRule(min_median_r=0.95, min_mean_ssim=0.9, fidelity_margin=0.01,
                     accuracy_margin=0.005)
GOOD = {"accuracy": 0.93, "real_median_r": 0.99, "bogus_median_r": 0.97,
        "real_mean_ssim": 0.98, "bogus_mean_ssim": 0.95}


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
        from pipeline.stages import promote as stage

        judged = {}
        for step, name in names.items():
            version = client.create_model_version(name, source=tmp_path.as_uri(),
                                                  description=f"what {name} is")
            judged[step] = {"name": name, "version": int(version.version)}
        headline = {k: v for k, v in figures.items() if k != "accuracy"}
        (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(
            {"judged": judged, "classifier": {"accuracy": figures["accuracy"]},
             "fidelity": {"headline": headline},
             "run": {"run_id": f"evaluate-run-{len(judged)}", "experiment_id": "7"}}))
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
    # the description keeps what the version is and gains the decision, with a link to
    # the evaluate run in the MLflow UI
    assert client.get_model_version("hits-classifier", "1").description == (
        "what hits-classifier is\n\n**Promotion:** promoted: "
        f"{first['reason'].rstrip('.')}. Figures: [the evaluate run]"
        "(#/experiments/7/runs/evaluate-run-2).")

    worse = promote(GOOD | {"bogus_median_r": 0.90})
    assert worse["decision"] == "rejected"
    assert worse["champion"]["figures"]["bogus_median_r"] == pytest.approx(0.97)
    for name in ("hits-classifier", "occlusion-estimator"):
        assert _aliases(client, name) == {"champion": "1", "challenger": "2"}
    assert "bogus_median_r 0.9000 < the champion's 0.9700" in client.get_model_version(
        "occlusion-estimator", "2").tags["promotion.reason"]
    rejected = client.get_model_version("occlusion-estimator", "2").description
    assert rejected.startswith("what occlusion-estimator is\n\n**Promotion:** rejected: ")

    within = promote(GOOD | {"real_median_r": 0.985})
    assert within["decision"] == "promoted"
    assert _aliases(client, "occlusion-estimator") == {"champion": "3", "challenger": "2"}
    assert within["aliases"]["occlusion-estimator"] == {"champion": "3", "challenger": "2"}

    from pipeline.stages import promote as stage

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
    # the forced decision replaces the rejection's paragraph; it does not pile up
    forced_text = client.get_model_version("occlusion-estimator", "2").description
    assert forced_text.count("**Promotion:**") == 1 and "promoted (forced)" in forced_text

    # re-running the stage on the forced pair leaves it champion
    stage.main([])
    again = json.loads((tmp_path / "metrics" / "promote.json").read_text())
    assert again["decision"] == "promoted" and "already the champion" in again["reason"]
    assert _aliases(client, "occlusion-estimator") == {"champion": "2"}

    runs = client.search_runs([client.get_experiment_by_name("hits-occlusion").experiment_id],
                              filter_string="attributes.run_name = 'promote'")
    assert sorted(r.data.tags["decision"] for r in runs) == [
        "promoted", "promoted", "promoted", "promoted", "rejected"]
    # the candidate's figures under the names the other stages use
    assert {"test_accuracy", "bogus_median_r", "champion_bogus_median_r"} <= set(
        next(r for r in runs if r.data.tags["decision"] == "rejected").data.metrics)


def test_stage_refuses_an_evaluate_file_without_versions(project):
    tmp_path = project[2]
    from pipeline.stages import promote as stage

    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"classifier": {}}))
    with pytest.raises(ValueError, match="evaluate.json: no judged classifier version"):
        stage.main([])
    assert not (tmp_path / "metrics" / "promote.json").exists()


def test_stage_refuses_a_version_whose_stage_did_not_finish(project):
    promote, client, tmp_path = project
    from pipeline.glue.completion import COMPLETE_TAG

    promote(GOOD)  # versions 1 (bare: registered by hand, complete) become champions
    # a pair whose estimator's stage was killed after registering it
    client.create_model_version("hits-classifier", source=tmp_path.as_uri())
    version = client.create_model_version("occlusion-estimator", source=tmp_path.as_uri())
    client.set_model_version_tag("occlusion-estimator", version.version, COMPLETE_TAG, "false")
    judged = {"train_classifier": {"name": "hits-classifier", "version": 2},
              "train_estimator": {"name": "occlusion-estimator", "version": 2}}
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(
        {"judged": judged, "classifier": {"accuracy": 0.99},
         "fidelity": {"headline": {k: v for k, v in GOOD.items() if k != "accuracy"}}}))
    from pipeline.stages import promote as stage

    with pytest.raises(ValueError, match="occlusion-estimator version 2 is incomplete"):
        stage.main([])
    assert _aliases(client, "occlusion-estimator") == {"champion": "1"}


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

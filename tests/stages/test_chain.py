"""The stages after `prepare`, end to end on tiny data, with MLflow in a temp store."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_stage
from pipeline.glue import tracking

# the tracking module's budget of metric names per run, restated: a readable runs table
METRICS_PER_RUN = 60


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logged_inputs(run) -> dict[str, tuple[str, str]]:
    """{dataset name: (digest, context)} of a run's dataset inputs."""
    return {entry.dataset.name: (entry.dataset.digest,
                                 {tag.key: tag.value for tag in entry.tags}.get(
                                     "mlflow.data.context"))
            for entry in run.inputs.dataset_inputs}


@pytest.mark.slow
def test_one_epoch_writes_model_metrics_plots_run_and_version(tiny_chain):
    tmp_path, venv_env = tiny_chain

    metrics = json.loads((tmp_path / "metrics" / "train_classifier.json").read_text())
    for split in ("val", "test"):
        for key in ("accuracy", "loss", "precision", "recall", "f1", "roc_auc", "confusion"):
            assert key in metrics[split], (split, key)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert sum(metrics["test"]["confusion"].values()) == metrics["test"]["n"] == 30
    assert metrics["training"]["parameters"] == 8112 and metrics["training"]["epochs_run"] == 1
    plots = tmp_path / "plots" / "train_classifier"
    assert sorted(p.name for p in plots.iterdir()) == [
        "confusion.csv", "confusion.png", "curves.png", "history.csv"]
    assert (plots / "history.csv").read_text().splitlines()[0].startswith("epoch,")

    import keras
    import mlflow

    import pipeline.core.models  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(tmp_path / "models" / "classifier.keras")
    with np.load(tmp_path / "data" / "prepared" / "test.npz") as npz:
        stamps = npz["images"][:8]
    expected = model.predict(stamps, verbose=0)

    client = mlflow.MlflowClient(venv_env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("hits-occlusion").experiment_id],
        filter_string="attributes.run_name = 'train_classifier'")
    assert len(runs) == 1
    run = runs[0]
    assert "git_commit" in run.data.tags and run.data.params["classifier.arch"] == "seed"
    assert {"test_accuracy", "test_roc_auc", "best_val_accuracy"} <= set(run.data.metrics)
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert len(run.data.metrics) <= METRICS_PER_RUN
    # the epochs count from step 1: step 0 holds the final figures only
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [point.step for point in history] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion.png", "curves.png", "model_summary.txt",
            "train_classifier.json"} <= artifacts
    # each split it read is a dataset input, its digest the split file's sha256
    prepared = tmp_path / "data" / "prepared"
    assert _logged_inputs(run) == {
        f"synthetic/{name}": (_sha256(prepared / f"{name}.npz")[:32], context)
        for name, context in (("train", "training"), ("val", "validation"), ("test", "test"))}
    version = client.get_model_version("hits-classifier", "1")
    assert version.run_id == run.info.run_id
    # the tag a reader sees is rounded; the description says what the version is
    assert version.tags["test_accuracy"] == f"{metrics['test']['accuracy']:.4g}"
    assert "seed classifier (8,112 parameters" in version.description
    assert f"Test accuracy {metrics['test']['accuracy']:.4f}" in version.description
    # the logged model's page shows the final figures, not the first epoch's
    model_metrics = {m.key: m.value for m in client.get_logged_model(
        tracking.logged_model_id(version)).metrics}
    assert model_metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert "val_loss" not in model_metrics and "loss" not in model_metrics

    mlflow.set_tracking_uri(venv_env["MLFLOW_TRACKING_URI"])
    served = mlflow.tensorflow.load_model("models:/hits-classifier/1")
    np.testing.assert_allclose(served.predict(stamps, verbose=0), expected, atol=1e-6)


@pytest.mark.slow
def test_occlusion_maps_stage_writes_exact_maps_of_every_split(tiny_maps):
    tmp_path, env = tiny_maps
    import keras

    import pipeline.core.models  # noqa: F401
    from pipeline.core.occlusion import keras_predict_fn, occlusion_maps

    model = keras.saving.load_model(tmp_path / "models" / "classifier.keras")
    sizes = {}
    for name in ("train", "val", "test"):
        with np.load(tmp_path / "data" / "occlusion" / f"{name}.npz") as npz, \
                np.load(tmp_path / "data" / "prepared" / f"{name}.npz") as prepared:
            maps, target, base_prob = npz["maps"], npz["target"], npz["base_prob"]
            stamps = prepared["images"]
        sizes[name] = len(maps)
        assert maps.shape == (len(stamps), 21, 21) and maps.dtype == np.float32
        assert np.abs(maps).max() <= 1.0 and ((base_prob >= 0) & (base_prob <= 1)).all()
        probabilities = model.predict(stamps, verbose=0)
        np.testing.assert_array_equal(target, probabilities.argmax(axis=1))
    # the stage's maps are the engine's maps for the same classifier and settings
    again, _, _ = occlusion_maps(keras_predict_fn(model), stamps[:5])
    np.testing.assert_allclose(maps[:5], again, atol=1e-6)
    metrics = json.loads((tmp_path / "metrics" / "occlusion_maps.json").read_text())
    assert metrics["settings"]["positions"] == 441 and metrics["settings"]["patch"] == 3
    assert {name: metrics[name]["n"] for name in sizes} == sizes
    assert metrics["maps_per_s"] > 0


@pytest.mark.slow
def test_train_estimator_stage_end_to_end_and_pyfunc_round_trip(tiny_estimator):
    tmp_path, env = tiny_estimator
    metrics = json.loads((tmp_path / "metrics" / "train_estimator.json").read_text())
    assert metrics["training"]["epochs_run"] == 1 and metrics["training"]["train_maps"] == 67
    # the seed net is not invariant to quarter turns, so no turned copies were added
    assert metrics["training"]["quarter_turns"].startswith("not used: the classifier's output")
    assert metrics["training"]["train_maps_with_turns"] == 67
    report = metrics["test"]
    assert report["overall"]["n"] == 30
    assert {"estimate", "class_mean", "zero", "mse_skill"} <= set(report["overall"])
    assert set(report["by_amplitude"]) == {"<0.01", "0.01-0.05", "0.05-0.2", ">=0.2"}
    assert {"real_median_r", "bogus_mean_ssim", "mse_skill_overall"} <= set(report["headline"])
    assert metrics["registered"] == {"name": "occlusion-estimator", "version": 1,
                                     "run_id": metrics["registered"]["run_id"]}
    assert (tmp_path / "plots" / "train_estimator" / "gallery.png").stat().st_size > 10_000

    import keras
    import mlflow

    import pipeline.core.models  # noqa: F401

    explainer = keras.saving.load_model(tmp_path / "models" / "estimator.keras", compile=False)
    with np.load(tmp_path / "data" / "prepared" / "test.npz") as npz:
        stamps = npz["images"][:8]
    expected = explainer.predict(stamps, verbose=0)
    assert sorted(expected) == ["base_prob", "doubt", "maps", "target"]
    assert expected["maps"].shape == (8, 21, 21) and expected["doubt"].shape == (8,)
    assert ((expected["doubt"] >= 0) & (expected["doubt"] <= 2)).all()
    # the doubt head learnt from the validation maps' true errors; judged on the test split
    doubt = metrics["doubt"]
    assert doubt["training"]["maps"] == 23 and doubt["training"]["epochs_run"] >= 1
    assert doubt["test"]["exact_share"] == 0.05
    assert doubt["test"]["bad_delivered"] <= doubt["test"]["bad_estimate"]

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(metrics["registered"]["run_id"])
    assert run.info.run_name == "train_estimator" and run.data.params["estimator.epochs"] == "1"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    assert {"gallery.png", "train_estimator.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)}
    # the headline under the names evaluate uses too
    headline = report["headline"]
    for name, key in (("real_median_r", "real_median_r"), ("bogus_mean_ssim", "bogus_mean_ssim"),
                      ("mse_skill", "mse_skill_overall")):
        if headline[key] is not None:
            assert run.data.metrics[name] == pytest.approx(headline[key]), name
    assert run.data.metrics["exact_share"] == 0.05
    if doubt["test"]["spearman_doubt_error"] is not None:  # None: too few non-trivial maps
        assert run.data.metrics["doubt_spearman"] == pytest.approx(
            doubt["test"]["spearman_doubt_error"])
    assert len(run.data.metrics) <= METRICS_PER_RUN
    occlusion = tmp_path / "data" / "occlusion"
    inputs = _logged_inputs(run)
    assert inputs["exact-maps/train"] == (_sha256(occlusion / "train.npz")[:32], "training")
    assert set(inputs) == {f"{kind}/{name}" for kind in ("synthetic", "exact-maps")
                           for name in ("train", "val", "test")}

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    served = mlflow.pyfunc.load_model("models:/occlusion-estimator/1")
    answer = served.predict(stamps)
    assert sorted(answer) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(answer[name], value, atol=1e-6, err_msg=name)
    version = client.get_model_version("occlusion-estimator", "1")
    classifier = json.loads((tmp_path / "metrics" / "train_classifier.json").read_text())
    assert version.tags["classifier_version"] == str(classifier["registered"]["version"])
    assert version.tags["doubt"] == "true"
    assert f"of hits-classifier v{classifier['registered']['version']}, with a doubt" \
        in version.description
    # the store's copy of the explainer has its final name, not a temporary one
    stored = {a.path for a in client.list_logged_model_artifacts(
        tracking.logged_model_id(version), "artifacts")}
    assert "artifacts/estimator.keras" in stored, stored
    info = mlflow.models.get_model_info(version.source)
    assert {spec.name: spec.shape for spec in info.signature.outputs.inputs} == {
        "base_prob": (-1,), "doubt": (-1,), "maps": (-1, 21, 21), "target": (-1,)}
    bad = stamps.copy()
    bad[2, 3, 3, 1] = np.nan
    with pytest.raises(Exception, match="NaN"):
        served.predict(bad)


@pytest.mark.slow
def test_evaluate_stage_end_to_end(tiny_champion):
    # tiny_champion: evaluate, then promote (whose decision the report shows too)
    tmp_path, env = tiny_champion
    figures = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    classifier = json.loads((tmp_path / "metrics" / "train_classifier.json").read_text())
    # the same classifier on the same test split: the same accuracy as its own stage
    assert figures["classifier"]["accuracy"] == pytest.approx(classifier["test"]["accuracy"])
    assert sum(v["n"] for v in figures["classifier"]["by_kind"].values()) == 30
    assert sum(v["n"] for v in figures["classifier"]["by_snr_bin"].values()) == 30
    assert figures["fidelity"]["overall"]["n"] == 30
    faith = figures["faithfulness"]
    assert faith["n"] == 30 and faith["auc_ratio_estimate_to_exact"] == pytest.approx(
        faith["auc_estimate"] / faith["auc_exact"])
    assert {"all", "real", "bogus", "kind:real"} <= set(figures["localisation"])
    assert figures["sanity"]["n"] == 30
    speed = figures["speed"]
    assert speed["speedup"] == pytest.approx(
        speed["estimator_maps_per_s"] / speed["exact_maps_per_s"])
    # engine auto on the seed net: the incremental engine, the batched one timed beside it
    assert speed["exact_engine"] == "incremental"
    assert speed["speedup_over_batched"] == pytest.approx(
        speed["estimator_maps_per_s"] / speed["batched_maps_per_s"])
    # the doubt head's extra time, against the explainer without it, timed in the same run
    assert speed["doubt_share_of_explainer_time"] == pytest.approx(
        speed["estimator_without_doubt_maps_per_s"] / speed["estimator_maps_per_s"] - 1)
    assert figures["judged"]["train_estimator"]["version"] == 1
    chosen = figures["selective"]
    assert chosen["exact_share"] == 0.05 and chosen["n"] == 30
    # 5 % of 30 maps: ceil(1.5) = 2 recomputed, in each order
    assert {policy: point["all"]["recomputed"]
            for policy, point in chosen["operating_point"].items()} == {
        "doubt": 2, "oracle": 2, "random": 2}
    assert set(chosen["aurc"]) == {"doubt", "oracle", "random"}
    assert chosen["aurc"]["oracle"] <= min(chosen["aurc"].values()) + 1e-12
    out = tmp_path / "plots" / "evaluate"
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.png", "deletion.csv", "deletion.png", "fidelity_by_amplitude.csv",
        "gallery.png", "gallery_bogus.png", "gallery_by_kind.png", "gallery_real.png",
        "kinds", "selective.csv", "selective.png"]
    # one gallery per kind of stamp the test split holds
    with np.load(tmp_path / "data" / "prepared" / "test.npz") as npz:
        kinds = set(npz["kind"].tolist())
    assert {p.stem for p in (out / "kinds").iterdir()} == kinds
    # the amplitude bins are numbered, so that a chart sorting them as text keeps the order
    bins = [row.split(",")[0] for row in
            (out / "fidelity_by_amplitude.csv").read_text().splitlines()[1:]]
    assert bins == ["1: <0.01", "2: 0.01-0.05", "3: 0.05-0.2", "4: >=0.2"]
    rows = (out / "selective.csv").read_text().splitlines()
    assert rows[0].startswith("share,doubt_median_r,doubt_p1_r,doubt_p0_1_r,doubt_bad_share,")
    assert len(rows) == 1 + len(chosen["curves"]["doubt"])
    rows = (out / "deletion.csv").read_text().splitlines()
    assert rows[0] == "fraction_removed,exact,estimate,class_mean,random" and len(rows) == 23

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("hits-occlusion").experiment_id],
        filter_string="attributes.run_name = 'evaluate'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["train_estimator_version"] == "1"
    assert len(run.data.metrics) <= METRICS_PER_RUN
    # the same figure under the same name as in the training stages' runs
    logged = run.data.metrics
    assert logged["test_accuracy"] == pytest.approx(figures["classifier"]["accuracy"])
    assert logged["speedup"] == pytest.approx(speed["speedup"])
    assert logged["exact_share"] == chosen["exact_share"]
    assert logged["delivered_speedup"] == pytest.approx(chosen["cost"]["delivered_speedup"])
    for name in ("real_median_r", "bogus_median_r", "real_mean_ssim", "bogus_mean_ssim"):
        if figures["fidelity"]["headline"][name] is not None:
            assert logged[name] == pytest.approx(figures["fidelity"]["headline"][name]), name
    assert figures["run"]["run_id"] == run.info.run_id
    assert "evaluate.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # linked to both models it judged: inputs of the run, its figures on their pages
    judged = {name: tracking.logged_model_id(client.get_model_version(name, "1"))
              for name in ("hits-classifier", "occlusion-estimator")}
    assert {m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs} == set(
        judged.values())  # (search_runs leaves the model inputs out)
    on_estimator = {m.key: m.value for m in client.get_logged_model(
        judged["occlusion-estimator"]).metrics if m.run_id == run.info.run_id}
    assert on_estimator["speedup"] == pytest.approx(speed["speedup"])
    on_classifier = {m.key for m in client.get_logged_model(
        judged["hits-classifier"]).metrics if m.run_id == run.info.run_id}
    assert "test_accuracy" in on_classifier and "speedup" not in on_classifier
    assert set(_logged_inputs(run)) == {"synthetic/test", "exact-maps/test",
                                        "exact-maps/train"}

    # the results page and the README's headline are regenerated from these metrics, not
    # typed (make report)
    (tmp_path / "README.md").write_text("intro\n<!-- headline:start -->\nold\n"
                                        "<!-- headline:end -->\nafter\n")
    report = subprocess.run([sys.executable, "-m", "pipeline.report"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n<!-- headline:start -->\n") and readme.endswith("after\n")
    assert "old" not in readme
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| non-trivial, true bogus |" in text
    for page in (readme, text):
        assert f"{figures['classifier']['accuracy'] * 100:.2f} %" in page
    assert (tmp_path / "docs" / "gallery.png").read_bytes() == (out / "gallery.png").read_bytes()
    promote = json.loads((tmp_path / "metrics" / "promote.json").read_text())
    assert (f"Promotion: **{promote['decision']}**{' (forced)' if promote['forced'] else ''}, "
            "hits-classifier v1 + occlusion-estimator v1: ") in text


@pytest.fixture(scope="module")
def chain_31x31x3(tmp_path_factory, repo_root):
    """A project where the whole default chain ran on 31x31 twin stamps of three channels
    (template, science, difference: no SNR channel, as ALeRCE's ZTF crops), the seed net
    on the difference channel; returns (directory, environment)."""
    import os
    import sys
    from pathlib import Path

    import yaml

    tmp_path = tmp_path_factory.mktemp("chain31")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["synthetic"].update(n=120, stamp_size=31,
                                       channels=["template", "science", "difference"])
    params["classifier"].update(epochs=1, batch_size=16, channels=[2])
    params["occlusion"].update(chunk_size=7)
    params["estimator"].update(epochs=1, batch_size=16)
    params["evaluate"].update(faithfulness_n=20, sanity_n=4, speed_n=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    for stage in ("prepare", "train_classifier", "occlusion_maps", "train_estimator",
                  "evaluate", "promote"):
        run_stage(stage, tmp_path, env)
    return tmp_path, env


@pytest.mark.slow
def test_the_chain_runs_on_31x31_stamps_of_three_channels(chain_31x31x3, tmp_path):
    project, env = chain_31x31x3
    import keras
    import mlflow

    import pipeline.core.models  # noqa: F401
    from pipeline.core.occlusion import keras_predict_fn, occlusion_maps

    with np.load(project / "data" / "prepared" / "test.npz") as npz:
        stamps, channels = npz["images"], npz["channels"]
    assert stamps.shape[1:] == (31, 31, 3)
    assert list(channels) == ["template", "science", "difference"]
    with np.load(project / "data" / "occlusion" / "test.npz") as npz:
        maps = npz["maps"]
    assert maps.shape == (len(stamps), 31, 31)
    classifier = keras.saving.load_model(project / "models" / "classifier.keras")
    assert tuple(classifier.input.shape[1:]) == (31, 31, 3)
    # the stage's maps are the engine's maps on the classifier's own geometry: 961 patches
    again, _, _ = occlusion_maps(keras_predict_fn(classifier), stamps[:3])
    np.testing.assert_allclose(maps[:3], again, atol=1e-6)

    explainer = keras.saving.load_model(project / "models" / "estimator.keras")
    assert explainer.predict(stamps[:5], verbose=0)["maps"].shape == (5, 31, 31)
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert evaluate["fidelity"]["overall"]["n"] == len(stamps)
    promote = json.loads((project / "metrics" / "promote.json").read_text())
    assert promote["decision"] in ("promoted", "rejected")

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version("occlusion-estimator", "1")
    # both: an in-process occmap command of an earlier test may have set the registry's
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])
    info = mlflow.models.get_model_info(version.source)
    assert info.signature.inputs.inputs[0].shape == (-1, 31, 31, 3)
    outputs = {spec.name: spec.shape for spec in info.signature.outputs.inputs}
    assert outputs["maps"] == (-1, 31, 31) and outputs["doubt"] == (-1,)

    # occmap serves the same geometry from the registry, and names a mismatch clearly
    from click.testing import CliRunner

    from pipeline.cli import main

    np.savez(tmp_path / "stamps.npz", images=stamps[:4])
    out = tmp_path / "maps.npz"
    result = CliRunner().invoke(
        main, ["explain", str(tmp_path / "stamps.npz"), "--out", str(out), "--model", "1"],
        env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})
    assert result.exit_code == 0, result.output
    with np.load(out) as npz:
        np.testing.assert_allclose(npz["maps"],
                                   explainer.predict(stamps[:4], verbose=0)["maps"], atol=1e-6)
    np.savez(tmp_path / "hits.npz", images=np.zeros((2, 21, 21, 4), np.float32))
    result = CliRunner().invoke(
        main, ["explain", str(tmp_path / "hits.npz"), "--out", str(tmp_path / "no.npz"),
               "--model", "1"], env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})
    assert result.exit_code != 0 and "(31, 31, 3)" in result.output
    assert not (tmp_path / "no.npz").exists()

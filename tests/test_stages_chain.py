"""The stages after `prepare`, end to end on tiny data, with MLflow in a temp store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_stage


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
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion.png", "curves.png", "model_summary.txt"} <= artifacts
    version = client.get_model_version("hits-classifier", "1")
    assert version.run_id == run.info.run_id

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
    assert expected.shape == (8, 21, 21)

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(metrics["registered"]["run_id"])
    assert run.info.run_name == "train_estimator" and run.data.params["estimator.epochs"] == "1"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    assert "gallery.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "test_mse_skill_overall" in run.data.metrics

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    served = mlflow.pyfunc.load_model("models:/occlusion-estimator/1")
    np.testing.assert_allclose(served.predict(stamps), expected, atol=1e-6)
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
    assert figures["speed"]["speedup"] == pytest.approx(
        figures["speed"]["estimator_maps_per_s"] / figures["speed"]["exact_maps_per_s"])
    assert figures["judged"]["train_estimator"]["version"] == 1
    out = tmp_path / "plots" / "evaluate"
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.png", "deletion.csv", "deletion.png", "fidelity_by_amplitude.csv",
        "gallery.png"]
    rows = (out / "deletion.csv").read_text().splitlines()
    assert rows[0] == "fraction_removed,exact,estimate,class_mean,random" and len(rows) == 23

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("hits-occlusion").experiment_id],
        filter_string="attributes.run_name = 'evaluate'")
    assert len(runs) == 1
    assert runs[0].data.tags["train_estimator_version"] == "1"
    assert "speed.speedup" in runs[0].data.metrics

    # the README's results section is regenerated from these metrics, not typed
    (tmp_path / "README.md").write_text("intro\n<!-- results:start -->\nold\n"
                                        "<!-- results:end -->\nafter\n")
    run_stage("report", tmp_path, env)
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("intro\n<!-- results:start -->\n") and text.endswith("after\n")
    assert "old" not in text and "| non-trivial, true bogus |" in text
    assert f"{figures['classifier']['accuracy'] * 100:.2f} %" in text
    assert (tmp_path / "docs" / "gallery.png").read_bytes() == (out / "gallery.png").read_bytes()
    promote = json.loads((tmp_path / "metrics" / "promote.json").read_text())
    assert (f"Promotion: **{promote['decision']}**{' (forced)' if promote['forced'] else ''}, "
            "hits-classifier v1 + occlusion-estimator v1: ") in text


def test_quarter_turns_are_added_only_where_they_are_exact_maps():
    import keras

    from pipeline.core.models.classifiers import build_classifier
    from pipeline.core.params import OcclusionParams
    from pipeline.train_estimator import add_quarter_turns

    rng = np.random.default_rng(9)
    split = {"images": rng.random((3, 21, 21, 4)).astype(np.float32),
             "maps": rng.normal(0, 0.1, (3, 21, 21)).astype(np.float32),
             "labels": np.array([1, 0, 1]), "target": np.array([1, 0, 0]),
             "base_prob": np.array([0.9, 0.8, 0.7], np.float32)}
    keras.utils.set_random_seed(10)
    deep = build_classifier("deephits", (0, 1, 2, 3))
    turned, why = add_quarter_turns(split, deep, OcclusionParams())
    assert why.startswith("used")
    assert {key: len(value) for key, value in turned.items()} == dict.fromkeys(split, 12)
    np.testing.assert_array_equal(turned["maps"][3:6], np.rot90(split["maps"], 1, axes=(1, 2)))
    np.testing.assert_array_equal(turned["images"][9:12],
                                  np.rot90(split["images"], 3, axes=(1, 2)))
    np.testing.assert_array_equal(turned["target"], np.tile(split["target"], 4))

    same, why = add_quarter_turns(split, deep, OcclusionParams(stride=3))
    assert same is split and "patch grid is not symmetric" in why
    same, why = add_quarter_turns(split, build_classifier("seed", (3,)), OcclusionParams())
    assert same is split and "output changes when a stamp is turned" in why

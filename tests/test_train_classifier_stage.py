"""The `train_classifier` stage end to end on tiny data, with MLflow in a temp store."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml


@pytest.mark.slow
def test_one_epoch_writes_model_metrics_plots_run_and_version(tmp_path, repo_root, venv_env):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["synthetic"]["n"] = 120
    params["classifier"].update(epochs=1, batch_size=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    for stage in ("prepare", "train_classifier"):
        result = subprocess.run([sys.executable, "-m", f"pipeline.{stage}"], cwd=tmp_path,
                                env=venv_env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr

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

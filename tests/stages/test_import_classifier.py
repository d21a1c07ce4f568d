"""`classifier.source: file`: the train_classifier stage imports a user's model file, and
the stages after it run unchanged; a bad file leaves no run, no version and no output.
`occmap explain --exact --classifier-file` maps a file directly."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import VENV_BIN, naive_maps, run_stage, seed_like_model, write_legacy_sequential


def _project(tiny_chain, tmp_path, classifier_file, **classifier):
    """A project with tiny_chain's prepared stamps, its own MLflow store, and params that
    import ``classifier_file``; returns (directory, environment)."""
    source, env = tiny_chain
    shutil.copytree(source / "data" / "prepared", tmp_path / "data" / "prepared")
    (tmp_path / "data" / "raw").mkdir()
    params = yaml.safe_load((source / "params.yaml").read_text())
    params["classifier"].update(source="file", file={"path": str(classifier_file),
                                                     **classifier.pop("file", {})}, **classifier)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    return tmp_path, env


def _stamps(directory, split="test"):
    with np.load(directory / "data" / "prepared" / f"{split}.npz") as npz:
        return npz["images"], npz["labels"]


@pytest.mark.slow
def test_an_imported_h5_is_registered_with_its_hash_and_explained_downstream(tiny_chain,
                                                                             tmp_path):
    original = seed_like_model((27, 27, 1))
    path = write_legacy_sequential(original, tmp_path / "their_net.h5", (27, 27, 1))
    project, env = _project(tiny_chain, tmp_path / "project", path, file={"pad": 3})
    result = run_stage("train_classifier", project, env)
    assert "imported" in result.stdout and "their_net.h5 (h5" in result.stdout

    import keras
    import mlflow

    import pipeline.core.models  # noqa: F401  (registers the custom layers)

    images, labels = _stamps(project)
    expected = original.predict(np.pad(images[..., 3:4], ((0, 0), (3, 3), (3, 3), (0, 0))),
                                verbose=0)
    saved = keras.saving.load_model(project / "models" / "classifier.keras")
    np.testing.assert_allclose(saved.predict(images, verbose=0), expected, atol=1e-6)

    metrics = json.loads((project / "metrics" / "train_classifier.json").read_text())
    accuracy = float((expected.argmax(axis=1) == labels).mean())
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert metrics["training"]["file"]["sha256"] == sha
    assert metrics["training"]["arch"] == "imported" and metrics["training"]["epochs_run"] == 0

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version("hits-classifier", "1")
    assert version.tags["file.format"] == "h5" and version.tags["file.sha256"] == sha
    run = client.get_run(version.run_id)
    assert run.data.tags["classifier.source"] == "file"
    assert "their_net.h5" in {a.path for a in client.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    served = mlflow.tensorflow.load_model("models:/hits-classifier/1")
    np.testing.assert_allclose(served.predict(images[:8], verbose=0), expected[:8], atol=1e-6)

    # downstream, unchanged: exact maps of the import, an estimator on its features
    run_stage("occlusion_maps", project, env)
    with np.load(project / "data" / "occlusion" / "test.npz") as npz:
        assert npz["maps"].shape == (len(images), 21, 21)
        np.testing.assert_array_equal(npz["target"], expected.argmax(axis=1))
    result = run_stage("train_estimator", project, env)
    assert "registered occlusion-estimator v1" in result.stdout


def _savedmodel(directory):
    original = seed_like_model()
    module = tf.Module()
    module.model = original
    module.serve = tf.function(lambda x: {"probabilities": original(x, training=False)},
                               input_signature=[tf.TensorSpec([None, 21, 21, 1], tf.float32)])
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


@pytest.mark.slow
def test_a_savedmodel_takes_class_or_margin_conditions_only(tiny_chain, tmp_path):
    path = _savedmodel(tmp_path / "their_savedmodel")
    project, env = _project(tiny_chain, tmp_path / "project", path)
    run_stage("train_classifier", project, env)
    run_stage("occlusion_maps", project, env)
    params = yaml.safe_load((project / "params.yaml").read_text())
    refused = run_stage("train_estimator", project, env, check=False)  # features: refused
    assert refused.returncode != 0
    assert "imported SavedModel (an opaque graph): use estimator.condition class or margin" \
        in refused.stderr
    params["estimator"].update(arch="seed_ae", condition="margin")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage("train_estimator", project, env)
    assert "seed_ae" in result.stdout and "registered occlusion-estimator v1" in result.stdout

    # the served pyfunc carries the SavedModel inside its explainer: it needs nothing else
    import keras
    import mlflow

    import pipeline.core.models  # noqa: F401  (registers the custom layers)

    shutil.rmtree(path)
    images, _ = _stamps(project)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    served = mlflow.pyfunc.load_model("models:/occlusion-estimator/1")
    explainer = keras.saving.load_model(project / "models" / "estimator.keras")
    answer, expected = served.predict(images[:4]), explainer.predict(images[:4], verbose=0)
    assert sorted(answer) == sorted(expected) == ["base_prob", "doubt", "maps", "target"]
    for name, value in expected.items():
        np.testing.assert_allclose(answer[name], value, atol=1e-6, err_msg=name)


def _lambda_file(tmp_path):
    path = write_legacy_sequential(seed_like_model(), tmp_path / "with_lambda.h5", (21, 21, 1))
    import h5py

    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        config["config"][3] = {"class_name": "Lambda", "config": {"name": "lambda_1"}}
        h5.attrs["model_config"] = json.dumps(config)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("make", "message"), [
    (_lambda_file, "with_lambda.h5: layer 'lambda_1' of class 'Lambda' is not supported"),
    (lambda tmp_path: write_legacy_sequential(seed_like_model(last="linear"),
                                              tmp_path / "logits.h5", (21, 21, 1)),
     "logits.h5: the model's outputs are not probabilities"),
])
def test_a_bad_file_leaves_no_run_no_version_and_no_model(tiny_chain, tmp_path, make,
                                                           message):
    project, env = _project(tiny_chain, tmp_path / "project", make(tmp_path))
    result = run_stage("train_classifier", project, env, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "models").exists() and not (project / "metrics").exists()
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.search_registered_models() == []
    experiments = client.search_experiments()
    assert not client.search_runs([e.experiment_id for e in experiments])


@pytest.mark.slow
def test_occmap_gives_exact_maps_of_a_model_file(tiny_chain, tmp_path):
    from pipeline.core.params import OcclusionParams

    original = seed_like_model((27, 27, 1))
    path = write_legacy_sequential(original, tmp_path / "their_net.h5", (27, 27, 1))
    images, labels = _stamps(tiny_chain[0])
    stamps = tmp_path / "stamps.npz"
    np.savez(stamps, images=images[:3], labels=labels[:3])
    out = tmp_path / "maps.npz"
    command = [str(VENV_BIN / "occmap"), "explain",
               str(stamps), "--out", str(out), "--exact", "--classifier-file", str(path),
               "--channels", "3", "--pad", "3"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                            env=tiny_chain[1], timeout=300)
    assert result.returncode == 0, result.stderr
    occlusion = OcclusionParams()  # no params.yaml in tmp_path: the defaults

    def predict(x):
        padded = np.pad(x[..., 3:4], ((0, 0), (3, 3), (3, 3), (0, 0)))
        return original(padded, training=False).numpy()

    expected = naive_maps(predict, images[:3], occlusion.patch, occlusion.stride,
                          occlusion.fill, occlusion.padding, occlusion.reduce)
    with np.load(out) as npz:
        np.testing.assert_allclose(npz["maps"], expected, atol=1e-5)
        assert str(npz["model_uri"]) == str(path) and str(npz["method"]) == "exact"

    command[command.index("--pad") + 1] = "2"  # 21 + 4 cannot reach 27
    out.unlink()
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                            env=tiny_chain[1], timeout=300)
    assert result.returncode != 0 and "(use pad 3)" in result.stderr and not out.exists()
    command.remove("--exact")  # the estimator is the registry's, trained for another net
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                            env=tiny_chain[1], timeout=300)
    assert result.returncode == 2 and "--classifier-file gives exact maps: add --exact" \
        in result.stderr

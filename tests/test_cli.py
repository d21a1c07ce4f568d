"""`occmap explain`: estimated and exact maps from the registry's champions, PNG panels, and
clear errors that leave nothing written."""

from __future__ import annotations

import pickle
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import VENV_BIN
from pipeline.cli import main
from pipeline.core.geometry import RANGE_TOLERANCE


@pytest.fixture(scope="module")
def stamps_file(tiny_champion):
    """Seven test stamps with labels as an .npz, and the tiny project (dir, env)."""
    tmp_path, env = tiny_champion
    with np.load(tmp_path / "data" / "prepared" / "test.npz") as npz:
        images, labels = npz["images"][:7], npz["labels"][:7]
    path = tmp_path / "stamps.npz"
    np.savez(path, images=images, labels=labels)
    return path, images, labels, tmp_path, env


def _explain(env, *args):
    return CliRunner().invoke(main, ["explain", *map(str, args)],
                              env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})


def test_help_reads_well():
    result = subprocess.run([str(VENV_BIN / "occmap"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "explain" in result.stdout
    result = subprocess.run([str(VENV_BIN / "occmap"), "explain", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--out", "--exact", "--model", "--png", "champion"):
        assert option in result.stdout


@pytest.mark.slow
def test_estimated_maps_equal_the_explainer_and_panels_are_written(stamps_file, tmp_path):
    path, images, labels, project, env = stamps_file
    out, panels = tmp_path / "maps.npz", tmp_path / "panels"
    result = _explain(env, path, "--out", out, "--png", panels, "--png-limit", 3)
    assert result.exit_code == 0, result.output
    import keras

    import pipeline.core.models  # noqa: F401

    explainer = keras.saving.load_model(project / "models" / "estimator.keras", compile=False)
    with np.load(out, allow_pickle=False) as npz:
        expected = explainer.predict(images, verbose=0)
        for name in ("maps", "target", "base_prob", "doubt"):
            np.testing.assert_allclose(npz[name], expected[name], atol=1e-6, err_msg=name)
        assert not npz["exact"].any()
        np.testing.assert_array_equal(npz["labels"], labels)
        assert str(npz["method"]) == "estimate"
        assert str(npz["model_uri"]) == "models:/occlusion-estimator@champion"
    assert sorted(p.name for p in panels.iterdir()) == [
        "stamp_000000.png", "stamp_000001.png", "stamp_000002.png"]
    assert (panels / "stamp_000000.png").read_bytes()[:4] == b"\x89PNG"
    # a version number works as well as an alias
    again = _explain(env, path, "--out", tmp_path / "v1.npz", "--model", "1")
    assert again.exit_code == 0, again.output
    with np.load(tmp_path / "v1.npz") as first, np.load(out) as second:
        np.testing.assert_array_equal(first["maps"], second["maps"])


@pytest.mark.slow
def test_exact_maps_of_a_hits_pickle_equal_the_engine(stamps_file, tmp_path):
    path, images, labels, project, env = stamps_file
    pickled = tmp_path / "stamps.pkl"
    pickled.write_bytes(pickle.dumps({"images": images, "labels": labels}))
    out = tmp_path / "exact.npz"
    result = _explain(env, pickled, "--out", out, "--exact")
    assert result.exit_code == 0, result.output
    import keras

    import pipeline.core.models  # noqa: F401
    from pipeline.core.occlusion import keras_predict_fn, occlusion_maps

    classifier = keras.saving.load_model(project / "models" / "classifier.keras")
    maps, target, base_prob = occlusion_maps(keras_predict_fn(classifier), images)
    with np.load(out, allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["maps"], maps, atol=1e-5)
        np.testing.assert_array_equal(npz["target"], target)
        np.testing.assert_allclose(npz["base_prob"], base_prob, atol=1e-6)
        assert str(npz["model_uri"]) == "models:/hits-classifier@champion"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no images", "NaN", "not stamps", "unknown version",
                                  "0-255 stamps", "truncated", "huge array pickle"])
def test_bad_input_gives_a_clear_error_and_writes_nothing(stamps_file, tmp_path, case):
    path, images, _, _, env = stamps_file
    bad = tmp_path / "bad.npz"
    args = []
    if case == "no images":
        np.savez(bad, stamps=images)
        expected = f"{bad}: no array 'images' in the .npz"
    elif case == "NaN":
        broken = images.copy()
        broken[4, 0, 0, 2] = np.nan
        np.savez(bad, images=broken)
        expected = f"{bad}: stamps hold NaN or infinite values (first in stamp 4)"
    elif case == "not stamps":
        bad.write_text("template,science\n1,2\n")
        expected = f"{bad}: corrupt or truncated pickle"
    elif case == "0-255 stamps":
        scaled = images * 255.0
        scaled[:2] = images[:2]  # the first two stamps are fine
        np.savez(bad, images=scaled)
        outside = int(((scaled < -RANGE_TOLERANCE) | (scaled > 1 + RANGE_TOLERANCE)).sum())
        expected = (f"{bad}: {outside} values in 5 of 7 stamps lie outside [0, 1] "
                    "(first in stamp 2;")
    elif case == "truncated":
        whole = path.read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
        expected = f"{bad}: unreadable .npz, truncated or corrupt"
    elif case == "huge array pickle":
        # 38 bytes that ask for an uninitialised 80 TB array through the allowed ndarray
        bad.write_bytes(b"\x80\x02cnumpy\nndarray\nq\x00\x8a\x06\x00\xa0rN\x18\t"
                        b"\x85q\x01\x85q\x02Rq\x03.")
        expected = (f"{bad}: unsafe pickle, refused an array of shape (10000000000000,) "
                    "of 80,000,000,000,000 bytes")
    else:
        bad, args = path, ["--model", "99"]
        expected = "models:/occlusion-estimator/99: cannot load it"
    out, panels = tmp_path / "maps.npz", tmp_path / "panels"
    result = _explain(env, bad, "--out", out, "--png", panels, *args)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    # nothing written: no maps, no panels, no temporary leftovers
    assert [p.name for p in tmp_path.iterdir()] == ([bad.name] if bad.parent == tmp_path
                                                    else [])


@pytest.mark.slow
def test_allow_out_of_range_lets_the_model_see_the_stamps_as_they_are(stamps_file, tmp_path):
    _, images, _, project, env = stamps_file
    scaled = tmp_path / "scaled.npz"
    np.savez(scaled, images=images * 3.0)
    out = tmp_path / "maps.npz"
    result = _explain(env, scaled, "--out", out, "--allow-out-of-range")
    assert result.exit_code == 0, result.output
    import keras

    import pipeline.core.models  # noqa: F401

    explainer = keras.saving.load_model(project / "models" / "estimator.keras", compile=False)
    with np.load(out, allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["maps"],
                                   explainer.predict(images * 3.0, verbose=0)["maps"], atol=1e-5)


@pytest.mark.parametrize("store", ["missing sqlite", "unreachable server"])
def test_a_store_that_is_not_there_fails_in_one_line_and_is_not_created(tmp_path, store):
    import socket

    stamps = tmp_path / "stamps.npz"
    np.savez(stamps, images=np.random.default_rng(0).random((2, 21, 21, 4)))
    if store == "missing sqlite":
        uri = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
        expected = f"{uri}: no MLflow store there"
    else:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            uri = f"http://127.0.0.1:{probe.getsockname()[1]}"
        expected = f"{uri}: no MLflow tracking server answers"
    result = CliRunner().invoke(main, ["explain", str(stamps), "--out", str(tmp_path / "m.npz"),
                                       "--tracking-uri", uri])
    assert result.exit_code == 1, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stamps.npz"]


def _arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


@pytest.mark.slow
def test_exact_fallback_replaces_exactly_the_rows_of_highest_doubt(stamps_file, tmp_path):
    path, images, _, _, env = stamps_file
    runs = {"estimate": [], "exact": ["--exact"], "share 0": ["--exact-share", "0"],
            "share 1": ["--exact-share", "1"], "share 0.3": ["--exact-share", "0.3"]}
    out = {}
    for name, args in runs.items():
        result = _explain(env, path, "--out", tmp_path / f"{name}.npz", *args)
        assert result.exit_code == 0, (name, result.output)
        out[name] = _arrays(tmp_path / f"{name}.npz")
    estimate, exact = out["estimate"], out["exact"]
    assert exact["exact"].all() and not estimate["exact"].any()
    # share 0: the estimate as it is; share 1: every map as `--exact` computes it
    for name in ("maps", "target", "base_prob", "doubt"):
        np.testing.assert_array_equal(out["share 0"][name], estimate[name])
    assert not out["share 0"]["exact"].any() and str(out["share 0"]["method"]) == "estimate"
    assert out["share 1"]["exact"].all()
    for name in ("maps", "target", "base_prob"):
        np.testing.assert_array_equal(out["share 1"][name], exact[name])
    assert str(out["share 1"]["exact_model_uri"]) == "models:/hits-classifier/1"
    # 0.3 of 7 stamps: ceil(2.1) = 3, those of highest doubt (worked out here)
    chosen = np.zeros(7, bool)
    chosen[np.argsort(-estimate["doubt"], kind="stable")[:3]] = True
    part = out["share 0.3"]
    np.testing.assert_array_equal(part["exact"], chosen)
    assert str(part["method"]) == "estimate+exact"
    # the engine on 3 stamps, not 7: the same maps up to float rounding (TensorFlow's CPU
    # kernels sum in an order that depends on the batch), far below any estimate's error
    np.testing.assert_allclose(part["maps"][chosen], exact["maps"][chosen], atol=1e-6, rtol=0)
    assert np.abs(part["maps"][~chosen] - exact["maps"][~chosen]).max() > 1e-4
    np.testing.assert_array_equal(part["maps"][~chosen], estimate["maps"][~chosen])
    np.testing.assert_array_equal(part["doubt"], estimate["doubt"])
    # a maximum doubt: the maps above it, here those above the median doubt
    cut = float(np.median(estimate["doubt"]))
    result = _explain(env, path, "--out", tmp_path / "cut.npz", "--max-doubt", cut)
    assert result.exit_code == 0, result.output
    above = _arrays(tmp_path / "cut.npz")
    np.testing.assert_array_equal(above["exact"], estimate["doubt"] > cut)
    np.testing.assert_allclose(above["maps"][above["exact"]], exact["maps"][above["exact"]],
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, expected", [
    (["--exact-share", "1.5"], "1.5 is not in the range 0<=x<=1"),
    (["--exact-share", "-0.1"], "is not in the range 0<=x<=1"),
    (["--exact-share", "0.1", "--max-doubt", "0.2"], "give --exact-share or --max-doubt, not both"),
    (["--exact-share", "0.1", "--exact"], "--exact already makes every map exact"),
    (["--max-doubt", "-1"], "is not in the range x>=0"),
])
def test_a_bad_exact_share_is_refused_and_writes_nothing(tmp_path, args, expected):
    stamps = tmp_path / "stamps.npz"
    np.savez(stamps, images=np.random.default_rng(0).random((2, 21, 21, 4)))
    result = CliRunner().invoke(main, ["explain", str(stamps), "--out", str(tmp_path / "m.npz"),
                                       "--tracking-uri", f"sqlite:///{tmp_path / 'no.db'}",
                                       *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stamps.npz"]


def test_run_from_outside_the_project_it_uses_the_projects_store(tmp_path, monkeypatch,
                                                                   repo_root):
    from pipeline import cli
    from pipeline.glue import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no project here: not a git repository, no dvc.yaml
    assert cli.project_folder() == repo_root.resolve()
    assert cli.default_store() == tracking.default_tracking_uri(repo_root)
    assert list(tmp_path.iterdir()) == []


def test_store_commands(stamps_file):
    _, _, _, _, env = stamps_file
    import mlflow

    uri = env["MLFLOW_TRACKING_URI"]
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("hits-occlusion")
    result = CliRunner().invoke(main, ["store", "urls", "--port", "5055"],
                                env={"MLFLOW_TRACKING_URI": uri})
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"runs:   http://127.0.0.1:5055/#/experiments/{experiment.experiment_id}/runs"
        "?workflowType=machine_learning",
        "models: http://127.0.0.1:5055/#/models?workflowType=machine_learning"]
    # a store named by MLFLOW_TRACKING_URI is not the project's to re-root
    result = CliRunner().invoke(main, ["store", "reroot"], env={"MLFLOW_TRACKING_URI": uri})
    assert result.exit_code == 1 and "not the project's embedded store" in result.output


def test_exact_share_on_a_version_without_a_doubt_head_is_refused():
    from types import SimpleNamespace

    from pipeline.cli import with_exact_fallback

    estimated = {"maps": np.zeros((3, 21, 21), np.float32), "target": np.zeros(3, np.int32),
                 "base_prob": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match=r"s\.npz: models:/occlusion-estimator/4 gives no "
                                         r"doubt per map"):
        with_exact_fallback(estimated, SimpleNamespace(version="4"),
                            np.zeros((3, 21, 21, 4), np.float32), 0.1, None, "s.npz")


@pytest.mark.slow
def test_stderr_holds_only_occmaps_own_lines_unless_verbose(stamps_file, tmp_path):
    path, _, _, _, env = stamps_file
    command = [str(VENV_BIN / "occmap"), "explain", str(path), "--out", str(tmp_path / "m.npz")]
    child_env = {key: value for key, value in env.items()
                 if key != "TF_CPP_MIN_LOG_LEVEL"}  # not set by the caller: occmap's choice
    quiet = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    lines = [line.strip() for line in quiet.stderr.replace("\r", "\n").splitlines()
             if line.strip()]
    # the progress bar only: no TensorFlow start-up lines, no MLflow warnings
    assert lines and all(line.startswith("estimated maps") for line in lines), lines
    loud = subprocess.run([*command, "--verbose"], env=child_env, capture_output=True,
                          text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    # TensorFlow's own start-up line, which the quiet run hid
    assert "cpu_feature_guard" in loud.stderr and "cpu_feature_guard" not in quiet.stderr

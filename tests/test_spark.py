"""`occmap explain --engine spark`: the same maps as in one process (estimator and exact
engine), on a real local Spark (local[2]); bad input gets the same errors and a failed job
writes nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import run_stage
from pipeline.cli import main


@pytest.fixture(scope="module")
def stamps(tiny_champion, tmp_path_factory):
    project, env = tiny_champion
    with np.load(project / "data" / "prepared" / "test.npz") as npz:
        images = npz["images"][:12]
    path = tmp_path_factory.mktemp("spark") / "stamps.npz"
    np.savez(path, images=images)
    return path, images, env


def _explain(env, *args):
    return CliRunner().invoke(main, ["explain", *map(str, args)],
                              env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})


def _doubt_cut(env, path, folder) -> str:
    """A --max-doubt between the two doubts furthest apart: the same rows are chosen
    whichever engine estimated them (their doubts differ by float rounding, ~1e-8)."""
    result = _explain(env, path, "--out", folder / "estimate.npz")
    assert result.exit_code == 0, result.output
    with np.load(folder / "estimate.npz") as npz:
        doubts = np.sort(npz["doubt"].astype(np.float64))
    gap = int(np.argmax(np.diff(doubts)))
    return repr(float(doubts[gap] + doubts[gap + 1]) / 2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["estimate", "exact", "fallback"])
def test_spark_gives_the_maps_of_one_process(spark_ready, stamps, tmp_path, mode):
    path, images, env = stamps
    mode = {"estimate": [], "exact": ["--exact"],
            "fallback": ["--max-doubt", _doubt_cut(env, path, tmp_path)]}[mode]
    here = _explain(env, path, "--out", tmp_path / "here.npz", *mode)
    assert here.exit_code == 0, here.output
    there = _explain(env, path, "--out", tmp_path / "spark.npz", *mode, "--engine", "spark",
                     "--master", "local[2]")
    assert there.exit_code == 0, there.output
    with np.load(tmp_path / "here.npz") as one, np.load(tmp_path / "spark.npz") as spark:
        assert sorted(one.files) == sorted(spark.files)
        assert spark["maps"].shape == (len(images), 21, 21)
        np.testing.assert_array_equal(spark["target"], one["target"])
        np.testing.assert_array_equal(spark["exact"], one["exact"])
        if "--max-doubt" in mode:  # some rows recomputed, not all
            assert 0 < spark["exact"].sum() < len(images)
        for name in ("maps", "base_prob", "doubt"):
            if name in one.files:
                np.testing.assert_allclose(spark[name], one[name], atol=1e-6, rtol=0,
                                           err_msg=name)


@pytest.mark.slow
def test_bad_stamps_get_the_same_error_and_nothing_is_written(spark_ready, stamps, tmp_path):
    path, images, env = stamps
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=images * 255.0)
    messages = []
    for engine in ("local", "spark"):
        out = tmp_path / f"{engine}.npz"
        result = _explain(env, bad, "--out", out, "--engine", engine, "--master", "local[2]")
        assert result.exit_code != 0 and not out.exists()
        messages.append(result.output.replace(str(out), "OUT"))
    assert "outside [0, 1]" in messages[0] and messages[0] == messages[1]


@pytest.mark.slow
def test_a_failed_job_raises_with_the_executors_error(spark_ready, stamps):
    import mlflow

    from pipeline.glue.pyfunc import load_registered_explainer
    from pipeline.glue.spark import explain_on_spark

    path, images, env = stamps
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    estimator, _ = load_registered_explainer("occlusion-estimator", "champion")
    # NaN stamps, past the driver's check: the executors' own check refuses them
    broken = images.copy()
    broken[3, 0, 0, 0] = np.nan
    with pytest.raises(RuntimeError, match="the Spark job failed: .*NaN"):
        explain_on_spark(broken, estimator.model, "estimate", "local[2]")


@pytest.mark.slow
def test_the_occlusion_maps_stage_on_spark_gives_the_maps_of_one_process(spark_ready,
                                                                         tiny_maps, tmp_path):
    """occlusion.spark_master: each split's maps by a Spark job; here with target: label,
    so the class to explain travels with each stamp. Held to the engine in this process."""
    from pipeline.core.explain import engine_for
    from pipeline.core.params import OcclusionParams
    from pipeline.glue.artifacts import load_model

    project, env = tiny_maps
    for folder in ("data/prepared", "models"):
        shutil.copytree(project / folder, tmp_path / folder)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["occlusion"].update(spark_master="local[2]", target="label")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage("occlusion_maps", tmp_path, env)

    classifier = load_model(tmp_path / "models" / "classifier.keras")
    occlusion = OcclusionParams.from_dict(params["occlusion"])
    engine = engine_for(classifier, occlusion)
    for split in ("train", "val", "test"):
        with np.load(tmp_path / "data" / "prepared" / f"{split}.npz") as npz:
            images, labels = npz["images"], npz["labels"]
        maps, target, base_prob = engine.maps(images, target=labels,
                                              chunk_size=occlusion.chunk_size)
        with np.load(tmp_path / "data" / "occlusion" / f"{split}.npz") as npz:
            np.testing.assert_array_equal(npz["target"], labels)
            np.testing.assert_array_equal(npz["target"], target)
            np.testing.assert_allclose(npz["maps"], maps, atol=1e-6, rtol=0)
            np.testing.assert_allclose(npz["base_prob"], base_prob, atol=1e-6, rtol=0)
    summary = yaml.safe_load((tmp_path / "metrics" / "occlusion_maps.json").read_text())
    assert summary["spark_master"] == "local[2]"

"""The Dockerfile lints clean; the benchmark command prints its figures as promised."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_dockerfile_passes_hadolint(repo_root):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(repo_root / "Dockerfile")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_dvc_repro_with_volumes(repo_root):
    text = (repo_root / "Dockerfile").read_text()
    assert 'CMD ["dvc", "repro"]' in text
    for volume in ("/project/data", "/project/models", "/project/mlruns"):
        assert volume in text


@pytest.mark.slow
def test_generator_benchmark_prints_json_last(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.bench", "generator", "--n", "300"],
        cwd=repo_root, capture_output=True, text=True, timeout=300, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["n"] == 300 and figures["stamps_per_s"] > 0
    for key in ("pixel_mean", "pixel_std", "bogus_negative_share", "real_diff_max_within_1px",
                "accuracy_ceiling"):
        assert key in figures
    assert "stamps/s" in result.stdout


@pytest.mark.slow
def test_occlusion_benchmark_prints_json_last(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.bench", "occlusion", "--arch", "seed", "--n", "8",
         "--chunk-size", "4", "--per-stamp-n", "2"],
        cwd=repo_root, capture_output=True, text=True, timeout=300, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("bound_maps_per_s", "engine_maps_per_s", "share_of_bound",
                "per_stamp_maps_per_s", "classifier_images_per_s", "peak_rss_gb"):
        assert figures[key] > 0, key
    assert figures["positions"] == 441
    assert figures["share_of_bound"] == pytest.approx(
        figures["engine_maps_per_s"] / figures["bound_maps_per_s"])


@pytest.mark.slow
def test_estimator_benchmark_prints_json_last(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.bench", "estimator", "--arch", "seed", "--n", "8",
         "--estimator", "tap_ae", "--condition", "taps", "--batch-size", "512"],
        cwd=repo_root, capture_output=True, text=True, timeout=300, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("estimator_maps_per_s", "exact_maps_per_s", "speedup", "classifier_pass_per_s",
                "estimator_only_maps_per_s", "marginal_speedup", "speedup_ceiling"):
        assert figures[key] > 0, key
    assert figures["speedup"] == pytest.approx(
        figures["estimator_maps_per_s"] / figures["exact_maps_per_s"])
    # both exact engines timed; the speedup is over the faster, and over the batched beside
    engines = {"batched": figures["batched_maps_per_s"],
               "incremental": figures["incremental_maps_per_s"]}
    assert figures["exact_engine"] == max(engines, key=engines.get)
    assert figures["exact_maps_per_s"] == engines[figures["exact_engine"]]
    assert figures["speedup_over_batched"] == pytest.approx(
        figures["estimator_maps_per_s"] / figures["batched_maps_per_s"])
    assert figures["explanation_overhead"] == pytest.approx(
        figures["classifier_pass_per_s"] / figures["estimator_maps_per_s"] - 1)
    assert (figures["estimator"], figures["condition"], figures["estimator_batch"],
            figures["speedup_goal"]) == ("tap_ae", "taps", 512, 25.0)

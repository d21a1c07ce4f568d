"""The `prepare` stage end to end: synthetic and real sources, failures, and `dvc repro`."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import copy_repo
from pipeline.core.data.synthetic import CHANNELS

N_TINY = 60


def _expected_sizes(n):
    # sklearn rounds the held-out part up: test = ceil(0.25 n), val = ceil(0.25 rest)
    test = math.ceil(0.25 * n)
    val = math.ceil(0.25 * (n - test))
    return {"train": n - test - val, "val": val, "test": test}


def _project(tmp_path: Path, repo_root: Path, **data_overrides) -> Path:
    """A working directory with the repo's params.yaml, changed by ``data_overrides``."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["synthetic"]["n"] = N_TINY
    for dotted, value in data_overrides.items():
        section = params["data"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            section = section[key]
        section[leaf] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    return tmp_path


def _run_prepare(cwd, env):
    return subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_synthetic_source_writes_splits_and_metrics(tmp_path, repo_root, venv_env):
    project = _project(tmp_path, repo_root)
    result = _run_prepare(project, venv_env)
    assert result.returncode == 0, result.stderr
    sizes = _expected_sizes(N_TINY)
    seen = []
    for name, size in sizes.items():
        with np.load(project / "data" / "prepared" / f"{name}.npz") as npz:
            assert npz["images"].shape == (size, 21, 21, 4)
            assert abs(npz["labels"].sum() - size / 2) <= 1  # stratified 50/50
            assert npz["evidence"].shape == (size, 21, 21)
            assert {"kind", "snr", "labels"} <= set(npz.files)
            seen.append(npz["images"].reshape(size, -1))
    # the splits are disjoint: no stamp appears twice
    assert len(np.unique(np.concatenate(seen), axis=0)) == N_TINY
    metrics = json.loads((project / "metrics" / "prepare.json").read_text())
    assert metrics["source"] == "synthetic"
    assert {metrics[s]["n"] for s in sizes} == set(sizes.values())
    assert set(metrics["all"]["channel_mean"]) == set(CHANNELS)
    assert 0.9 < metrics["accuracy_ceiling"] <= 1.0
    assert "bogus_negative_share" in metrics["calibration"]
    leftovers = [p for p in (project / "data" / "prepared").iterdir() if p.suffix != ".npz"]
    assert leftovers == []


@pytest.mark.slow
def test_hits_source_loads_the_real_pickle_format(tmp_path, repo_root, venv_env):
    rng = np.random.default_rng(1)
    images = rng.random((40, 21, 21, 4))
    labels = np.array([0, 1] * 20)
    project = _project(tmp_path, repo_root, source="hits", **{"hits.path": "data/raw/h.pkl"})
    (project / "data" / "raw" / "h.pkl").write_bytes(
        pickle.dumps({"images": images, "labels": labels}, protocol=2))
    result = _run_prepare(project, venv_env)
    assert result.returncode == 0, result.stderr
    with np.load(project / "data" / "prepared" / "test.npz") as npz:
        assert sorted(npz.files) == ["channels", "images", "labels"]
        assert list(npz["channels"]) == ["template", "science", "difference", "snr_difference"]
        assert len(npz["labels"]) == 10
    metrics = json.loads((project / "metrics" / "prepare.json").read_text())
    assert metrics["source"] == "hits" and metrics["all"]["n"] == 40


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_hostile_pickle_fails_cleanly_and_writes_nothing(tmp_path, repo_root, venv_env):
    marker = tmp_path / "pwned"
    project = _project(tmp_path, repo_root, source="hits", **{"hits.path": "data/raw/h.pkl"})
    (project / "data" / "raw" / "h.pkl").write_bytes(pickle.dumps(
        {"images": np.zeros((2, 21, 21, 4)), "labels": np.array([0, 1]), "x": _Hostile(marker)}))
    result = _run_prepare(project, venv_env)
    assert result.returncode == 1
    assert "data/raw/h.pkl: unsafe pickle" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (project / "data" / "prepared").exists()
    assert not (project / "metrics").exists()


@pytest.mark.slow
@pytest.mark.parametrize("labels, message", [
    (np.ones(40, int), "all 40 stamps are of class 1: the split needs stamps of both classes"),
    (np.array([0, 1] * 3), "6 stamps (3 of class 0, 3 of class 1) are too few for the split"),
])
def test_a_set_the_split_cannot_use_fails_naming_the_file_and_keeps_the_old_data(
        tmp_path, repo_root, venv_env, labels, message):
    project = _project(tmp_path, repo_root, source="hits", **{"hits.path": "data/raw/h.pkl"})
    rng = np.random.default_rng(2)
    (project / "data" / "raw" / "h.pkl").write_bytes(pickle.dumps(
        {"images": rng.random((len(labels), 21, 21, 4)), "labels": labels}))
    earlier = project / "data" / "prepared" / "train.npz"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"the previous run's data")
    result = _run_prepare(project, venv_env)
    assert result.returncode == 1
    assert f"data/raw/h.pkl: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert earlier.read_bytes() == b"the previous run's data"
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["train.npz"]


@pytest.mark.slow
def test_dvc_repro_prepare_in_a_copy_of_the_repo(tmp_path, repo_root, venv_env):
    copy = tmp_path / "repo"
    copy_repo(repo_root, copy)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["data"]["synthetic"]["n"] = N_TINY
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    dvc = str(Path(sys.executable).parent / "dvc")

    first = subprocess.run([dvc, "repro", "prepare"], cwd=copy, env=venv_env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (copy / "dvc.lock").is_file()
    for name, size in _expected_sizes(N_TINY).items():
        with np.load(copy / "data" / "prepared" / f"{name}.npz") as npz:
            assert len(npz["labels"]) == size

    again = subprocess.run([dvc, "repro", "prepare"], cwd=copy, env=venv_env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "didn't change, skipping" in again.stdout

    status = subprocess.run([dvc, "status", "prepare"], cwd=copy, env=venv_env, capture_output=True,
                            text=True, timeout=600)
    assert "up to date" in status.stdout, status.stdout

"""Shared fixtures: the repository root, and tiny synthetic stamp sets made once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.data.synthetic import make_stamps

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def venv_env(tmp_path) -> dict[str, str]:
    """Environment for subprocesses: the venv first on PATH, MLflow in a temp store."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


@pytest.fixture(scope="session")
def stamps_all_kinds():
    """400 stamps of the default preset: every kind at least 4 times (exact shares)."""
    return make_stamps(400, seed=7, preset="default")


@pytest.fixture(autouse=True)
def _restore_mlflow_uri_variable():
    """mlflow.set_tracking_uri / set_registry_uri also set MLFLOW_TRACKING_URI /
    MLFLOW_REGISTRY_URI in os.environ (and a module global for the registry); undo that
    after each test so one test's temporary store never leaks into the next."""
    from mlflow.tracking._model_registry import utils as registry_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    registry_before = registry_utils._registry_uri
    yield
    registry_utils._registry_uri = registry_before
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def run_stage(stage, cwd, env, *args, check=True):
    """Run ``python -m pipeline.stages.<stage> *args`` in ``cwd``; with ``check`` it must
    succeed."""
    result = subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", *args], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory, repo_root):
    """A project directory where prepare and train_classifier ran on 120 stamps, 1 epoch,
    with MLflow in a temporary store; returns (directory, environment)."""
    tmp_path = tmp_path_factory.mktemp("chain")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["synthetic"]["n"] = 120
    params["classifier"].update(epochs=1, batch_size=16)
    params["occlusion"].update(chunk_size=7)
    params["estimator"].update(epochs=1, batch_size=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    for stage in ("prepare", "train_classifier"):
        run_stage(stage, tmp_path, env)
    return tmp_path, env


@pytest.fixture(scope="session")
def tiny_maps(tiny_chain):
    """``tiny_chain`` after the occlusion_maps stage."""
    run_stage("occlusion_maps", *tiny_chain)
    return tiny_chain


@pytest.fixture(scope="session")
def tiny_estimator(tiny_maps):
    """``tiny_maps`` after the train_estimator stage."""
    run_stage("train_estimator", *tiny_maps)
    return tiny_maps


@pytest.fixture(scope="session")
def tiny_evaluated(tiny_estimator):
    """``tiny_estimator`` after the evaluate stage."""
    run_stage("evaluate", *tiny_estimator)
    return tiny_estimator


@pytest.fixture(scope="session")
def tiny_champion(tiny_evaluated):
    """``tiny_evaluated`` after the promote stage, run by the rule (its metrics/promote.json
    kept as promote_rule.json) and then forced, so the tiny pair holds ``champion``."""
    tmp_path, env = tiny_evaluated
    run_stage("promote", tmp_path, env)
    metrics = tmp_path / "metrics"
    (metrics / "promote_rule.json").write_bytes((metrics / "promote.json").read_bytes())
    run_stage("promote", tmp_path, env, "--force", "--note", "tiny test pair")
    return tiny_evaluated

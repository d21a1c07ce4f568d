"""Shared fixtures: the repository root, and tiny synthetic stamp sets made once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ; undo that after
    each test so one test's temporary store never leaks into the next."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before

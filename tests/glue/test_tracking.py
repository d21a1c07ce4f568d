"""MLflow set-up: default store location, the environment override, a logged run."""

from __future__ import annotations

import subprocess

import pytest

from pipeline.glue import tracking


def test_default_uri_is_sqlite_inside_mlruns(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert tracking.default_artifact_location(tmp_path).endswith("/mlruns/artifacts")


def test_environment_overrides_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_project_root_is_the_main_repository_even_from_a_worktree(tmp_path):
    main = tmp_path / "main"
    main.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(main)], check=True)
    subprocess.run([*git, "-C", str(main), "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)
    worktree = tmp_path / "copy"
    subprocess.run([*git, "-C", str(main), "worktree", "add", "-q", str(worktree)], check=True)
    assert tracking.project_root(worktree) == main.resolve()
    assert tracking.project_root(tmp_path / "main") == main.resolve()


def test_project_root_from_a_dvc_experiment_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main = tmp_path / "main"
    copy = main / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc123"
    copy.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(main)], check=True)
    subprocess.run(["git", "init", "-q", str(copy)], check=True)  # DVC clones, not worktrees
    assert tracking.project_root(copy) == main.resolve()
    assert tracking.tracking_uri(tracking.project_root(copy)).startswith(
        f"sqlite:///{main.resolve()}/mlruns/")


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2}) == {
        "a.b": 1, "a.c.d": "x", "e": 2}


@pytest.mark.slow
def test_a_run_is_logged_with_commit_tag_and_params(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with tracking.start_run("prepare", params={"data": {"seed": 3}}, root=tmp_path) as run:
        mlflow.log_metric("n", 12)
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri(tmp_path))
    logged = client.get_run(run.info.run_id)
    assert logged.data.params == {"data.seed": "3"}
    assert logged.data.metrics == {"n": 12.0}
    assert logged.data.tags["mlflow.runName"] == "prepare"
    assert "git_commit" in logged.data.tags
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == tracking.EXPERIMENT
    assert experiment.artifact_location == (tmp_path / "mlruns" / "artifacts").resolve().as_uri()

"""MLflow set-up: default store location, the environment override, a logged run."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
    # the UI opens it as a model-training experiment (runs table), not in its GenAI view
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_a_moved_project_store_finds_its_artifacts_again(tmp_path, monkeypatch):
    import shutil

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    subprocess.run(["git", "init", "-q", str(before)], check=True)
    with tracking.start_run("prepare", root=before) as run:
        mlflow.log_text("hello", "note.txt")
        artifact_uri = run.info.artifact_uri
    client = mlflow.MlflowClient(tracking.tracking_uri(before))
    client.create_registered_model("m")
    client.create_model_version("m", source=f"{artifact_uri}/note.txt", run_id=run.info.run_id)
    shutil.move(before, after)

    # experiment 0 (MLflow's Default), ours, the run, the version's source and storage
    assert tracking.reroot_store(after) == 5
    assert tracking.reroot_store(after) == 0  # nothing left to move
    client = mlflow.MlflowClient(tracking.tracking_uri(after))
    moved = client.get_run(run.info.run_id)
    assert moved.info.artifact_uri.startswith((after / "mlruns").resolve().as_uri())
    assert (Path(client.download_artifacts(run.info.run_id, "note.txt")).read_text()
            == "hello")
    assert client.get_model_version("m", "1").source.startswith(
        (after / "mlruns").resolve().as_uri())
    assert tracking.reroot_store(tmp_path / "no-project") == 0


def test_headline_metrics_keep_their_names_and_drop_what_is_not_a_number():
    headline = {"real_median_r": 0.99, "bogus_median_r": None, "real_mean_ssim": float("nan"),
                "mse_skill_overall": 0.5, "meets_goals": True}
    assert tracking.fidelity_metrics(headline) == {"real_median_r": 0.99, "mse_skill": 0.5}
    assert tracking.classifier_metrics({"accuracy": 0.9, "f1": 0.8, "n": 30}) == {
        "test_accuracy": 0.9, "test_f1": 0.8}
    assert tracking.selective_metrics({"spearman_doubt_error": 0.7, "curves": {}}) == {
        "doubt_spearman": 0.7}
    assert tracking.rounded(0.9643200000000001) == "0.9643"
    assert tracking.rounded(3) == "3" and tracking.rounded("x") == "x"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_fails_at_once_naming_it(monkeypatch, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(tracking.StoreUnavailable, match=f"^{uri}: no MLflow tracking server "
                                                        "answers"):
        tracking.check_store(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(tracking.StoreUnavailable, match=uri):
        tracking.configure(tmp_path)  # what every tracking stage calls first


def test_a_reader_refuses_a_store_that_does_not_exist_and_creates_none(tmp_path):
    missing = tmp_path / "typo" / "mlflow.db"
    for uri in (f"sqlite:///{missing}", str(tmp_path / "no-store"),
                (tmp_path / "no-store").as_uri()):
        with pytest.raises(tracking.StoreUnavailable, match="does not exist"):
            tracking.check_store(uri, must_exist=True)
        tracking.check_store(uri)  # a writer may create it
    assert list(tmp_path.iterdir()) == []
    missing.parent.mkdir()
    missing.write_bytes(b"")
    tracking.check_store(f"sqlite:///{missing}", must_exist=True)


@pytest.mark.slow
def test_a_running_tracking_server_passes_the_check(tmp_path, venv_env):
    import time
    import urllib.request

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
        env=venv_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        tracking.check_store(uri, must_exist=True)
    finally:
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_recovery_fails_dead_runs_and_deletes_only_incomplete_versions(tmp_path, monkeypatch):
    import mlflow

    from pipeline.glue import completion, processes

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    experiment_id = tracking.configure(tmp_path)
    client = mlflow.MlflowClient()
    child = subprocess.Popen(["true"])
    child.wait()
    dead = {**processes.owner(), processes.PID_TAG: str(child.pid)}
    runs = {
        "dead": client.create_run(experiment_id, tags=dead),
        "alive": client.create_run(experiment_id, tags=processes.owner()),
        "elsewhere": client.create_run(experiment_id,
                                       tags={**dead, processes.HOST_TAG: "another-host"}),
        "untagged": client.create_run(experiment_id),
        "finished": client.create_run(experiment_id, tags=dead),
    }
    client.set_terminated(runs["finished"].info.run_id, "FINISHED")
    name = completion.REGISTERED_NAMES[1]
    client.create_registered_model(name)

    def version(run_key, complete):
        made = client.create_model_version(name, (tmp_path / "model").as_uri(),
                                          runs[run_key].info.run_id)
        if complete is not None:
            client.set_model_version_tag(name, made.version, completion.COMPLETE_TAG, complete)
        return made.version

    v_dead = version("dead", "false")  # killed after registering: deleted
    v_alive = version("alive", "false")  # a stage still at work: kept
    v_done = version("finished", "true")  # complete: kept
    v_legacy = version("finished", None)  # before the tag existed, run FINISHED: kept
    v_untagged = version("dead", None)  # killed before the first tag: deleted
    v_chosen = version("dead", "false")  # incomplete but someone gave it an alias: kept
    client.set_registered_model_alias(name, "champion", v_chosen)

    tracking.recover(experiment_id)

    status = {key: client.get_run(run.info.run_id).info.status for key, run in runs.items()}
    assert status == {"dead": "FAILED", "alive": "RUNNING", "elsewhere": "RUNNING",
                      "untagged": "RUNNING", "finished": "FINISHED"}
    assert "died" in client.get_run(runs["dead"].info.run_id).data.tags["failed_because"]
    left = {v.version for v in client.search_model_versions(f"name = '{name}'")}
    assert left == {v_alive, v_done, v_legacy, v_chosen}
    assert {v_dead, v_untagged}.isdisjoint(left)
    complete = {v.version: completion.is_complete(client, v)
                for v in client.search_model_versions(f"name = '{name}'")}
    assert complete == {v_alive: False, v_done: True, v_legacy: True, v_chosen: False}
    with pytest.raises(ValueError, match="incomplete"):
        completion.check_complete(client, client.get_model_version(name, v_alive), "x")

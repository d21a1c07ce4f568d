"""A team's services (pipeline/services.py, `make services`): a real PostgreSQL and a real
MLflow tracking server on it, bound to 127.0.0.1, stopped by their PIDs, their data kept
across a restart; and the tiny chain, `occmap` and `mlflow models serve` on that server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    VENV_BIN,
    free_port,
    post_json,
    run_stage,
    services_folder,
    started_server,
    stopped_server,
    write_tiny_params,
)
from pipeline import services as team_services
from pipeline.core import search
from pipeline.glue import tracking
from pipeline.glue.processes import start_time

TRACKING_LINE = re.compile(r"MLFLOW_TRACKING_URI=(http://127\.0\.0\.1:\d+)")
STORAGE_LINE = re.compile(r"OPTUNA_STORAGE=(postgresql\+psycopg2://hits@127\.0\.0\.1:(\d+)/optuna)")


def _make(repo_root: Path, target: str, folder: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(["make", "-s", target, f"SERVICES_DIR={folder}"], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=600)


def _pids(folder: Path) -> tuple[int, int]:
    """(tracking server, PostgreSQL postmaster) PIDs as the services recorded them."""
    server = json.loads((folder / "mlflow.json").read_text())["pid"]
    postmaster = int((folder / "postgres" / "postmaster.pid").read_text().split()[0])
    return server, postmaster


@pytest.mark.slow
def test_make_services_prints_both_urls_and_keeps_the_data_across_a_restart(repo_root):
    import mlflow
    import optuna
    import psycopg2

    folder = services_folder()
    try:
        started = _make(repo_root, "services", folder)
        assert started.returncode == 0, started.stdout + started.stderr
        lines = started.stdout.strip().splitlines()
        assert len(lines) == 2, started.stdout
        tracking, storage = TRACKING_LINE.fullmatch(lines[0]), STORAGE_LINE.fullmatch(lines[1])
        assert tracking and storage, lines
        tracking_uri, storage_url = tracking.group(1), storage.group(1)
        # both answer when make returns: the server's health, the database through Optuna
        with urllib.request.urlopen(f"{tracking_uri}/health", timeout=10) as answer:
            assert answer.read().strip() == b"OK"
        study = optuna.create_study(study_name="restart-check", storage=storage_url)
        study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
        tried = [trial.params["x"] for trial in study.trials]
        with psycopg2.connect(host="127.0.0.1", port=int(storage.group(2)), user="hits",
                              dbname="optuna") as connection, connection.cursor() as cursor:
            cursor.execute("SHOW listen_addresses")
            assert cursor.fetchone()[0] == "127.0.0.1"
        mlflow.set_tracking_uri(tracking_uri)  # mlflow-artifacts:/ resolves through it
        client = mlflow.MlflowClient(tracking_uri)
        experiment = client.create_experiment("restart-check")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "figure", 0.25)
        client.log_text(run.info.run_id, "kept across a restart", "note.txt")
        client.set_terminated(run.info.run_id)
        # artifacts travel through the server into the services' folder
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert list((folder / "artifacts").rglob("note.txt"))

        pids = _pids(folder)
        stopped = _make(repo_root, "services-stop", folder)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"stopped mlflow server (pid {pids[0]})" in stopped.stdout
        assert f"stopped postgresql (pid {pids[1]})" in stopped.stdout
        assert [start_time(pid) for pid in pids] == [None, None]

        again = _make(repo_root, "services", folder)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.strip().splitlines() == lines  # the same ports
        restarted = _pids(folder)
        assert restarted != pids
        assert client.get_run(run.info.run_id).data.metrics == {"figure": 0.25}
        assert mlflow.artifacts.load_text(f"{run.info.artifact_uri}/note.txt") == \
            "kept across a restart"
        # a new storage as the pipeline opens it (connections checked before use)
        kept = optuna.load_study(study_name="restart-check",
                                 storage=search.open_storage(storage_url, ""))
        assert [trial.params["x"] for trial in kept.trials] == tried
        # started again while up: left as it is
        twice = _make(repo_root, "services", folder)
        assert twice.stdout.strip().splitlines() == lines and _pids(folder) == restarted
    finally:
        _make(repo_root, "services-stop", folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_folder_postgres_cannot_reach_is_refused_clearly(tmp_path):
    from pipeline import services as team_services

    if os.geteuid() != 0:
        pytest.skip("the OS user 'postgres' matters only when run as root")
    services_folder()  # skips without PostgreSQL
    # pytest's tmp_path lies under a folder only root may enter
    with pytest.raises(RuntimeError, match="cannot reach this folder"):
        team_services.start(tmp_path / "services")
    assert not (tmp_path / "services" / "mlflow.json").exists()


@pytest.fixture(scope="module")
def server_chain(services, tmp_path_factory, repo_root):
    """The tiny chain (prepare ... promote, champion forced) with MLflow on the services'
    tracking server."""
    project = tmp_path_factory.mktemp("server-chain")
    env = dict(os.environ, MLFLOW_TRACKING_URI=services.tracking_uri,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    write_tiny_params(repo_root, project)
    (project / "data" / "raw").mkdir(parents=True)
    for stage in ("prepare", "train_classifier", "occlusion_maps", "train_estimator",
                  "evaluate"):
        run_stage(stage, project, env)
    run_stage("promote", project, env, "--force", "--note", "the chain on a server")
    return project, env


def _in_process(project: Path, stamps: np.ndarray) -> dict[str, np.ndarray]:
    import keras

    import pipeline.core.models  # noqa: F401  (registers the custom layers)

    explainer = keras.saving.load_model(project / "models" / "estimator.keras", compile=False)
    return {name: np.asarray(value)
            for name, value in explainer.predict(stamps, verbose=0).items()}


@pytest.mark.slow
def test_the_chain_logs_registers_and_promotes_on_the_tracking_server(server_chain,
                                                                     services):
    import mlflow

    project, env = server_chain
    client = mlflow.MlflowClient(services.tracking_uri)
    experiment = client.get_experiment_by_name("hits-occlusion")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    for stage in ("train_classifier", "train_estimator", "evaluate", "promote"):
        assert runs[stage].info.status == "FINISHED", stage
        assert runs[stage].info.artifact_uri.startswith("mlflow-artifacts:/"), stage
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert runs["evaluate"].data.metrics["test_accuracy"] == pytest.approx(
        metrics["classifier"]["accuracy"])
    for name in ("hits-classifier", "occlusion-estimator"):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.version == "1" and champion.status == "READY", name
        assert champion.tags["promotion.force_note"] == "the chain on a server"
        assert "**Promotion:**" in champion.description
    # the evaluate run links the models it judged (their logged models; search_runs leaves
    # the model inputs out)
    judged = {tracking.logged_model_id(client.get_model_version(name, "1"))
              for name in ("hits-classifier", "occlusion-estimator")}
    inputs = client.get_run(runs["evaluate"].info.run_id).inputs.model_inputs
    assert {m.model_id for m in inputs} == judged and None not in judged
    # the artifacts went through the server into its own folder
    assert list((services.folder / "artifacts").rglob("estimator.keras"))


@pytest.mark.slow
def test_occmap_and_mlflow_models_serve_load_the_champion_from_the_server(server_chain,
                                                                         tmp_path):
    project, env = server_chain
    with np.load(project / "data" / "prepared" / "test.npz") as npz:
        stamps = npz["images"][:5]
    np.savez(tmp_path / "stamps.npz", images=stamps)
    expected = _in_process(project, stamps)
    explained = subprocess.run([str(VENV_BIN / "occmap"), "explain", str(tmp_path / "stamps.npz"),
                                "--out", str(tmp_path / "maps.npz")], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    assert explained.returncode == 0, explained.stderr
    with np.load(tmp_path / "maps.npz") as npz:
        assert str(npz["model_uri"]) == "models:/occlusion-estimator@champion"
        for name, value in expected.items():
            np.testing.assert_allclose(npz[name], value, atol=1e-6, err_msg=name)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = started_server([str(VENV_BIN / "mlflow"), "models", "serve", "-m",
                              "models:/occlusion-estimator@champion", "--env-manager", "local",
                              "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                             tmp_path, env, url, tmp_path / "serve.log")
    try:
        status, answer = post_json(f"{url}/invocations",
                                   json.dumps({"inputs": stamps.tolist()}).encode())
    finally:
        stopped_server(process)
    assert status == 200, answer
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(answer["predictions"][name], np.float64), value,
                                   atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_a_database_restart_while_a_run_logs_loses_nothing_and_leaves_no_half_version(
        services):
    """PostgreSQL stopped for 2 s under a run that logs every 0.1 s, with a model version
    registered in the outage (pipeline/bench_services.py's restart figure): the client
    either retries or fails clearly; every call it reported as done is stored exactly
    once, the run ends FINISHED, and the version is READY (never half registered)."""
    from pipeline.bench_services import bench_restart

    figures = bench_restart(services, outage_s=2.0, duration_s=8.0)
    assert figures["points_in_store"] == figures["logged_ok"] > 0
    assert figures["run_status"] == "FINISHED"
    assert figures["registration"]["result"] == "registered" or \
        "Error" in figures["registration"]["result"]
    assert all(version["status"] == "READY" for version in figures["versions"])
    assert len(figures["versions"]) == (figures["registration"]["result"] == "registered")
    # the server answers again with the same database
    assert team_services.status(services.folder) == {"postgresql": True, "mlflow": True}

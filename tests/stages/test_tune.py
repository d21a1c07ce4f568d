"""The tune stage: where studies live, its params, pruning, and both studies end to end on
tiny data with MLflow runs per trial."""

from __future__ import annotations

import shutil

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import run_stage
from pipeline.core import search
from pipeline.core.params import TuneParams

optuna.logging.set_verbosity(optuna.logging.WARNING)




def _study(journal):
    """The classifier study in the journal a stage run used."""
    cfg = TuneParams.from_dict({"journal": str(journal)})
    return search.open_study("classifier", cfg.classifier, cfg,
                             search.open_storage(None, cfg.journal))


def test_the_stage_storage_is_the_env_url_else_the_config_else_the_journal(tmp_path,
                                                                           monkeypatch):
    from pipeline.stages.tune import STORAGE_ENV, storage_for

    journal = tmp_path / "deep" / "journal.log"
    in_config, in_env = f"sqlite:///{tmp_path / 'cfg.db'}", f"sqlite:///{tmp_path / 'env.db'}"
    cfg = TuneParams.from_dict({"journal": str(journal), "storage": in_config,
                                "heartbeat_interval": 3, "grace_period": 7})
    monkeypatch.setenv(STORAGE_ENV, in_env)
    # a database: Optuna's RDBStorage with the section's heartbeat and one retry
    storage = storage_for(cfg)
    assert isinstance(storage, optuna.storages.RDBStorage) and storage.url == in_env
    assert (storage.heartbeat_interval, storage.grace_period) == (3, 7)
    assert storage.get_heartbeat_stale_trial_callback()._max_retry == 1
    monkeypatch.delenv(STORAGE_ENV)
    assert storage_for(cfg).url == in_config
    cfg = TuneParams.from_dict({"journal": str(journal)})
    assert isinstance(storage_for(cfg), optuna.storages.JournalStorage)
    assert journal.parent.is_dir()


def test_tune_params_are_checked():
    cfg = TuneParams.from_dict({"classifier": {"n_trials": 3}})
    assert cfg.classifier.n_trials == 3 and cfg.estimator.study == "estimator"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['trials'\]"):
        TuneParams.from_dict({"classifier": {"trials": 3}})
    with pytest.raises(ValueError, match="fidelity must be one of"):
        TuneParams.from_dict({"estimator": {"fidelity": "ssim"}})



@pytest.fixture(scope="module")
def tune_project(tiny_maps, tmp_path_factory, repo_root):
    """A copy of the tiny project (prepared stamps, classifier, exact maps) whose params
    make 3-trial studies of one epoch each."""
    source, env = tiny_maps
    project = tmp_path_factory.mktemp("tune")
    for name in ("data", "models", "params.yaml"):
        copy = shutil.copytree if (source / name).is_dir() else shutil.copy
        copy(source / name, project / name)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"] = yaml.safe_load((repo_root / "params.yaml").read_text())["tune"]
    params["classifier"]["batch_size"] = 64  # inside the space: the defaults are trial 0
    for target in ("classifier", "estimator"):
        params["tune"][target].update(n_trials=3, epochs=1, train_limit=0, val_limit=0,
                                      speed_batch=16)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlruns.db'}")
    return project, env


def _nested_runs(env, study):
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("hits-occlusion").experiment_id
    [parent] = client.search_runs([experiment],
                                  filter_string=f"tags.optuna_study = '{study}' and "
                                                "tags.mlflow.runName LIKE 'tune_%'")
    children = client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children


@pytest.mark.slow
def test_classifier_study_on_tiny_data_writes_the_best_params(tune_project):
    project, env = tune_project
    run_stage("tune", project, env, "classifier")
    best = yaml.safe_load((project / "tuning" / "best_classifier.yaml").read_text())
    study = _study(project / "tuning" / "optuna-journal.log")
    finished = [t for t in study.get_trials() if t.state in search.FINISHED]
    assert len(finished) == 3
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    top = max(complete, key=lambda t: t.value)
    assert best["trial"] == top.number and best["values"]["val_accuracy"] == top.value
    # trial 0 is the classifier section as it stands: the baseline
    assert study.trials[0].user_attrs["baseline"] and study.trials[0].params["batch_size"] == 64
    assert study.trials[0].params["learning_rate"] == 0.01
    assert best["dvc_exp_run"].startswith("dvc exp run -n tuned-classifier -S ")
    for name, value in top.params.items():
        section = best["classifier"] if name in best["classifier"] else \
            best["classifier"]["hparams"]
        assert section[name] == value
    parent, children = _nested_runs(env, "classifier")
    assert len(children) == 3 and parent.data.params["n_trials"] == "3"
    assert {c.data.tags["optuna_trial"] for c in children} == {"0", "1", "2"}
    # the whole study is copied into its snapshot, the stage's DVC output
    snapshot = _study(project / "tuning" / "studies" / "classifier.log").get_trials()
    assert [(t.number, t.state, t.value, t.params) for t in snapshot] == \
        [(t.number, t.state, t.value, t.params) for t in study.get_trials()]
    # a clone that pulled the snapshot but has no working journal, asking for one more
    # trial: the study resumes from the snapshot, under the same parent run
    (project / "tuning" / "optuna-journal.log").unlink()
    result = run_stage("tune", project, env, "classifier", "--n-trials", "4", "--workers", "1")
    assert "resumed from its snapshot" in result.stdout
    resumed = _study(project / "tuning" / "optuna-journal.log").get_trials()
    assert len([t for t in resumed if t.state in search.FINISHED]) == 4
    assert [t.params for t in resumed[:3]] == [t.params for t in snapshot]
    assert len(_study(project / "tuning" / "studies" / "classifier.log").get_trials()) == 4
    again, children = _nested_runs(env, "classifier")
    assert again.info.run_id == parent.info.run_id and len(children) == 4


@pytest.mark.slow
def test_estimator_study_with_two_workers_on_tiny_data(tune_project):
    project, env = tune_project
    run_stage("tune", project, env, "estimator", "--workers", "2", "--n-trials", "4")
    study = _study_estimator(project)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in search.FINISHED]
    assert len(finished) >= 4 and sorted(t.number for t in trials) == list(range(len(trials)))
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes ran trials
    best = yaml.safe_load((project / "tuning" / "best_estimator.yaml").read_text())
    chosen, met = search.fastest_meeting_floor(trials, 0.95)
    assert best["trial"] == chosen.number and best["meets_floor"] == met
    assert best["values"]["maps_per_s"] == chosen.values[1] > 0
    assert (project / "tuning" / "estimator_pareto.png").read_bytes()[:4] == b"\x89PNG"
    parent, children = _nested_runs(env, "estimator")
    assert len(children) == len(trials)
    assert all("maps_per_s" in c.data.metrics for c in children
               if c.data.tags["optuna_state"] == "COMPLETE")
    import mlflow

    artifacts = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).list_artifacts(
        parent.info.run_id)
    assert {"estimator_pareto.png", "best_estimator.yaml"} <= {a.path for a in artifacts}


def _study_estimator(project):
    cfg = TuneParams.from_dict({"journal": str(project / "tuning" / "optuna-journal.log")})
    return search.open_study("estimator", cfg.estimator, cfg,
                             search.open_storage(None, cfg.journal))


@pytest.mark.slow
def test_a_trial_the_pruner_stops_is_recorded_as_pruned(tune_project, monkeypatch):
    project, env = tune_project
    import mlflow

    from pipeline.core.params import PathsParams
    from pipeline.glue import tracking
    from pipeline.glue.files import load_params
    from pipeline.stages.tune import load_data, objective_for

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    params = load_params()
    spec = TuneParams.from_dict(params["tune"]).classifier
    splits, _, geometry = load_data("classifier", PathsParams.from_dict(params["paths"]), spec)
    tracking.configure()
    # a pruner no accuracy can satisfy: the first report stops the trial
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1.5))
    with mlflow.start_run(run_name="tune_pruning_test") as parent:
        objective = objective_for("classifier", params, spec, splits, None, geometry,
                                  parent.info.run_id)
        study.optimize(objective, n_trials=1)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # parent still open
    [trial] = study.trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    [child] = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert child.data.tags["optuna_state"] == "PRUNED" and child.info.status == "KILLED"
    assert 0.0 <= trial.intermediate_values[0] <= 1.0  # the reported val_accuracy


@pytest.mark.slow
def test_a_killed_worker_trial_is_retried_once_on_postgresql(tune_project, services, tmp_path):
    """Two workers on one PostgreSQL study; the second is killed (SIGKILL) in the middle
    of a trial. Its trial is failed by heartbeat and run again once by the live worker:
    the study reaches n_trials finished trials, none lost, none counted twice, and no
    MLflow run is left RUNNING."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    source, env = tune_project
    project = tmp_path / "project"
    for name in ("data", "models"):
        shutil.copytree(source / name, project / name)
    params = yaml.safe_load((source / "params.yaml").read_text())
    params["tune"].update(heartbeat_interval=1, grace_period=4, max_retry=1)
    # trials long enough to be killed in (20 epochs, no early stop, no pruning)
    params["tune"]["classifier"].update(study="killed-worker", n_trials=4, epochs=20,
                                        pruner_startup_trials=10)
    params["classifier"]["patience"] = 20
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(env, OPTUNA_STORAGE=services.optuna_storage,
               MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlruns.db'}")
    log = open(tmp_path / "tune.log", "w+")  # noqa: SIM115 (closed below)
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "pipeline.stages.tune", "classifier", "--workers", "2"],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    storage = search.open_storage(services.optuna_storage, "")
    victim = None
    deadline = time.monotonic() + 300
    try:
        while victim is None and time.monotonic() < deadline and coordinator.poll() is None:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="killed-worker", storage=storage)
            except KeyError:  # not created yet
                continue
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                pid = int(str(trial.user_attrs.get(search.WORKER_ATTR, ":0")).rsplit(":")[1])
                if pid not in (0, coordinator.pid):
                    victim = trial.number
                    os.kill(pid, signal.SIGKILL)
                    break
        assert victim is not None, "the second worker never ran a trial"
        coordinator.wait(timeout=600)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        log.seek(0)
        output = log.read()
        log.close()
    assert coordinator.returncode == 0, output[-4000:]
    assert "a worker process ended abnormally" in output

    trials = optuna.load_study(study_name="killed-worker", storage=storage).get_trials()
    by_state = {state: [t.number for t in trials if t.state == state] for state in TrialState}
    finished = [t for t in trials if t.state in search.FINISHED]
    assert len(finished) == 4
    assert by_state[TrialState.FAIL] == [victim] and not by_state[TrialState.RUNNING]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1 and retries[0].state in search.FINISHED
    assert retries[0].params == trials[victim].params
    best = yaml.safe_load((project / "tuning" / "best_classifier.yaml").read_text())
    assert best["trials"]["complete"] + best["trials"]["pruned"] == 4
    assert best["trials"]["fail"] == 1
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("hits-occlusion").experiment_id
    statuses = [run.info.status for run in client.search_runs([experiment])]
    # the parent and the 4 finished trials; the killed trial's run (when it got as far as
    # starting one) is FAILED, not RUNNING
    assert statuses.count("FINISHED") == 5 and "RUNNING" not in statuses
    assert statuses.count("FAILED") <= 1

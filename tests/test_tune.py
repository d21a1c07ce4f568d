"""Optuna searches: spaces and picks (pure), shared journal storage across processes, a
killed worker's study resuming, pruning, and both studies end to end on tiny data."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import run_stage
from pipeline.core import search
from pipeline.core.params import TuneParams

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- spaces -------------------------------------------------------------------------------

def test_space_parses_ints_floats_logs_and_choices():
    space = search.parse_space({"filters": {"low": 4, "high": 32, "log": True},
                                "dropout": {"low": 0.0, "high": 0.6},
                                "lr": {"low": 0.001, "high": 0.1, "log": True},
                                "optimizer": {"choices": ["sgd", "adam"]}}, "classifier")
    filters, dropout, lr, optimizer = space
    assert filters.is_int and filters.log and not dropout.is_int and lr.log
    assert optimizer.choices == ("sgd", "adam") and not optimizer.is_int
    values = search.suggest(optuna.trial.FixedTrial(
        {"filters": 16, "dropout": 0.25, "lr": 0.01, "optimizer": "adam"}), space)
    assert values == {"filters": 16, "dropout": 0.25, "lr": 0.01, "optimizer": "adam"}
    # sampled values stay inside the space, with the right types
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        sampled = search.suggest(trial, space)
        assert isinstance(sampled["filters"], int) and 4 <= sampled["filters"] <= 32
        assert 0.0 <= sampled["dropout"] <= 0.6 and 0.001 <= sampled["lr"] <= 0.1
        study.tell(trial, 0.0)


@pytest.mark.parametrize("raw, message", [
    ({}, "non-empty mapping"),
    ({"lr": 0.1}, r"tune.x.space.lr: expected"),
    ({"lr": {"low": 0.1}}, "needs both low and high"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "must be below high"),
    ({"lr": {"low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
    ({"opt": {"choices": []}}, "non-empty list"),
    ({"lr": {"low": 0.1, "high": 1, "scale": "log"}}, r"unknown key\(s\) \['scale'\]"),
])
def test_malformed_spaces_are_refused_naming_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        search.parse_space(raw, "x")


def test_suggestions_become_a_params_section_and_dvc_overrides():
    base = {"arch": "seed", "learning_rate": 0.01, "hparams": {"dense": 10}}
    fields = {"arch", "learning_rate", "batch_size", "hparams"}
    values = {"learning_rate": 0.003, "filters": 16, "dense": 20}
    assert search.apply(base, values, fields) == {
        "arch": "seed", "learning_rate": 0.003, "hparams": {"dense": 20, "filters": 16}}
    assert base["hparams"] == {"dense": 10}  # the base section is not modified
    assert search.overrides(values, fields, "classifier") == {
        "classifier.learning_rate": 0.003, "++classifier.hparams.filters": 16,
        "++classifier.hparams.dense": 20}


def test_pareto_front_by_hand():
    points = [(0.90, 100.0), (0.95, 50.0), (0.85, 200.0), (0.80, 150.0), (0.95, 40.0),
              (math.nan, 500.0)]
    # (0.80, 150) is beaten by (0.85, 200); (0.95, 40) by (0.95, 50); NaN never counts
    assert search.pareto_front(points) == [2, 0, 1]


def _finished(number, values, state=TrialState.COMPLETE):
    trial = create_trial(values=values if state == TrialState.COMPLETE else None,
                         state=state, params={"x": 0.5},
                         distributions={"x": FloatDistribution(0, 1)})
    trial.number = number
    return trial


def test_pick_is_the_fastest_trial_above_the_floor():
    trials = [_finished(0, [0.97, 1000.0]), _finished(1, [0.99, 400.0]),
              _finished(2, [0.90, 5000.0]), _finished(3, [0.96, 1500.0])]
    chosen, met = search.fastest_meeting_floor(trials, 0.95)
    assert chosen.number == 3 and met
    # nobody reaches the floor: the most faithful, flagged
    chosen, met = search.fastest_meeting_floor(trials, 0.995)
    assert chosen.number == 1 and not met
    with pytest.raises(ValueError, match="no complete trial"):
        search.fastest_meeting_floor([_finished(0, None, TrialState.PRUNED)], 0.9)


def test_remaining_counts_finished_and_running_trials():
    trials = [_finished(0, [1.0, 1.0]), _finished(1, None, TrialState.PRUNED),
              _finished(2, None, TrialState.FAIL)]
    assert search.remaining(trials, 5) == 3
    assert search.remaining(trials, 2) == 0


def test_tune_params_are_checked():
    cfg = TuneParams.from_dict({"classifier": {"n_trials": 3}})
    assert cfg.classifier.n_trials == 3 and cfg.estimator.study == "estimator"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['trials'\]"):
        TuneParams.from_dict({"classifier": {"trials": 3}})
    with pytest.raises(ValueError, match="fidelity must be one of"):
        TuneParams.from_dict({"estimator": {"fidelity": "ssim"}})


# --- shared storage, killed workers --------------------------------------------------------

WORKER = textwrap.dedent("""
    import os, socket, sys, time
    import optuna
    from pipeline.core.params import TuneParams
    from pipeline.tune import WORKER_ATTR, open_study, storage_for
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal, n, sleep, index = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    cfg = TuneParams.from_dict({"journal": journal})
    study = open_study("classifier", cfg.classifier, cfg, storage_for(cfg), index)
    def objective(trial):
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        x = trial.suggest_float("x", -1, 1)
        time.sleep(sleep)
        return -x * x
    study.optimize(objective, n_trials=n)
""")


def _worker(tmp_path, journal, n, sleep, index=0):
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return subprocess.Popen([sys.executable, "-c", WORKER, str(journal), str(n), str(sleep),
                             str(index)], env=env, cwd=tmp_path)


def _study(journal):
    cfg = TuneParams.from_dict({"journal": str(journal)})
    from pipeline.tune import open_study, storage_for

    return open_study("classifier", cfg.classifier, cfg, storage_for(cfg))


def test_two_processes_on_one_journal_add_up_their_trials(tmp_path):
    journal = tmp_path / "journal.log"
    workers = [_worker(tmp_path, journal, 12, 0.05, index) for index in (0, 1)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    trials = _study(journal).get_trials()
    assert len(trials) == 24 and sorted(t.number for t in trials) == list(range(24))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # the two seeded samplers did not propose the same points
    assert len({t.params["x"] for t in trials}) == 24


def test_a_killed_workers_trial_is_failed_requeued_and_the_study_resumes(tmp_path):
    from pipeline.tune import recover_killed_trials

    journal = tmp_path / "journal.log"
    worker = _worker(tmp_path, journal, 5, 60.0)  # its first trial sleeps for a minute
    deadline = time.monotonic() + 120
    while not journal.exists() or not any(
            t.state == TrialState.RUNNING and "worker" in t.user_attrs
            for t in _study(journal).get_trials()):
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.5)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    study = _study(journal)
    [killed] = study.get_trials()
    assert killed.state == TrialState.RUNNING  # nobody can tell it died ...
    assert recover_killed_trials(study) == [0]  # ... until a new start looks at its PID
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    resumed = _worker(tmp_path, journal, 3, 0.0)
    assert resumed.wait(timeout=300) == 0
    trials = _study(journal).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[1].params == killed.params and trials[1].user_attrs["retry_of"] == 0


# --- the studies on the tiny project ---------------------------------------------------------

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
    # run again asking for one more trial: the study resumes under the same parent run
    run_stage("tune", project, env, "classifier", "--n-trials", "4", "--workers", "1")
    assert len([t for t in _study(project / "tuning" / "optuna-journal.log").get_trials()
                if t.state in search.FINISHED]) == 4
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
    from pipeline.tune import open_study, storage_for

    return open_study("estimator", cfg.estimator, cfg, storage_for(cfg))


@pytest.mark.slow
def test_a_trial_the_pruner_stops_is_recorded_as_pruned(tune_project, monkeypatch):
    project, env = tune_project
    import mlflow

    from pipeline.core.params import PathsParams
    from pipeline.io import load_params
    from pipeline.tune import classifier_objective, load_data

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    params = load_params()
    spec = TuneParams.from_dict(params["tune"]).classifier
    splits, _ = load_data("classifier", PathsParams.from_dict(params["paths"]), spec)
    from pipeline.core import tracking

    tracking.configure()
    # a pruner no accuracy can satisfy: the first report stops the trial
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1.5))
    with mlflow.start_run(run_name="tune_pruning_test") as parent:
        objective = classifier_objective(params, spec, splits, parent.info.run_id)
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

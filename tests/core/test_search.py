"""The search library: spaces and picks (pure), shared journal storage across processes,
a killed worker's study resuming; and that it records nothing itself (no MLflow)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

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


def test_the_search_library_records_nothing_itself():
    # the objectives take their recording from the stage: no MLflow under pipeline.core
    code = ("import sys, pipeline.core.search.objectives; "
            "sys.exit('mlflow' in sys.modules or 'pipeline.glue' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# --- shared storage, killed workers --------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, time
    import optuna
    from pipeline.core.params import TuneParams
    from pipeline.core.search import mark_worker, open_storage, open_study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal, n, sleep, index = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    cfg = TuneParams.from_dict({"journal": journal})
    study = open_study("classifier", cfg.classifier, cfg, open_storage(None, journal), index)
    def objective(trial):
        mark_worker(trial)
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
    return search.open_study("classifier", cfg.classifier, cfg,
                             search.open_storage(None, cfg.journal))


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
    assert search.recover_killed_trials(study) == [0]  # ... until a new start looks at its PID
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    resumed = _worker(tmp_path, journal, 3, 0.0)
    assert resumed.wait(timeout=300) == 0
    trials = _study(journal).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[1].params == killed.params and trials[1].user_attrs["retry_of"] == 0


# --- the studies on the tiny project ---------------------------------------------------------

"""Optuna studies of the two searches: their storage, samplers and pruners, the baseline
trial, the recovery of a killed worker's trials, and the picks among finished trials.

Classifier study: one objective (validation accuracy, maximised) with median pruning.
Estimator study: two objectives (validation fidelity, explainer maps/s, both maximised);
the pick is the fastest trial whose fidelity reaches a floor.
"""

from __future__ import annotations

import inspect
import math
import os
import socket
import warnings
from collections.abc import Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.core.params import TuneParams, TuneTarget
from pipeline.core.search.space import Dimension

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Trial user attribute "<host>:<pid>" of the process running it; a later start on the same
# host tells a killed worker's RUNNING trial from a live one by that PID.
WORKER_ATTR = "worker"
# storage URLs that name a database (SQLAlchemy dialects Optuna's RDBStorage takes)
DATABASE_SCHEMES = ("postgresql", "sqlite", "mysql")


def open_storage(url: str | None, journal: str, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, max_retry: int = 1):
    """The study storage: for a database ``url`` (``postgresql...``, ``sqlite...``,
    ``mysql...``) an ``RDBStorage`` whose running trials beat every ``heartbeat_interval``
    seconds, a trial silent for ``grace_period`` seconds being failed and queued again up
    to ``max_retry`` times (``RetryHeartbeatStaleTrialCallback``), with connections
    checked before use (a restarted database server does not break a worker); any other
    ``url`` as given; with none a JournalStorage on the file ``journal`` (file locks make
    it safe for several processes on one machine; its folder must exist)."""
    if url and url.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES:
        with warnings.catch_warnings():  # heartbeat: experimental in Optuna 5, and needed
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=retry if heartbeat_interval else None,
                engine_kwargs={"pool_pre_ping": True})
    if url:
        return url
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))


def copy_study_between(study_name: str, from_storage, to_storage) -> bool:
    """Copy the study ``study_name`` (trials, attributes, directions) from ``from_storage``
    to ``to_storage`` when the first holds it and the second does not; returns whether it
    copied. A study's snapshot in a journal travels with the data (DVC); copied back into
    an empty storage, the search resumes from it."""
    if study_name not in optuna.get_all_study_names(from_storage) or \
            study_name in optuna.get_all_study_names(to_storage):
        return False
    optuna.copy_study(from_study_name=study_name, from_storage=from_storage,
                      to_storage=to_storage)
    return True


def has_heartbeat(study: optuna.Study) -> bool:
    """Whether ``study``'s storage fails silent trials by heartbeat (else a killed worker's
    trials are found by ``recover_killed_trials``)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled  # Optuna's own test

    return is_heartbeat_enabled(study._storage)


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the trials of workers that are gone and queue their parameters again: by
    heartbeat where the storage has one (Optuna's own retry callback queues them), else by
    the PID of a worker on this host. Returns the numbers of the trials failed."""
    if not has_heartbeat(study):
        return recover_killed_trials(study)
    running = {t.number for t in study.get_trials(deepcopy=False,
                                                  states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return sorted(t.number for t in study.get_trials(deepcopy=False,
                                                     states=(TrialState.FAIL,))
                  if t.number in running)


def open_study(target: str, spec: TuneTarget, cfg: TuneParams, storage,
               worker_index: int = 0) -> optuna.Study:
    """Create or load the ``target`` ("classifier" or "estimator") study ``spec.study`` in
    ``storage``; each worker's TPE sampler gets its own seed (``cfg.seed + worker_index``)
    so parallel workers do not propose the same first random trials."""
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + worker_index)
    if target == "classifier":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                             n_warmup_steps=spec.pruner_warmup_epochs)
        return optuna.create_study(study_name=spec.study, storage=storage, sampler=sampler,
                                   pruner=pruner, direction="maximize", load_if_exists=True)
    study = optuna.create_study(study_name=spec.study, storage=storage, sampler=sampler,
                                directions=["maximize", "maximize"], load_if_exists=True)
    with warnings.catch_warnings():  # experimental in Optuna 5, and stable enough here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.fidelity, "maps_per_s"])
    return study


def mark_worker(trial: optuna.Trial) -> None:
    """Record this process as the one running ``trial`` (``WORKER_ATTR``), for
    ``recover_killed_trials``."""
    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")


def recover_killed_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker process (on this machine) is gone as FAIL and queue
    their parameters again; returns their numbers."""
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        # Optuna has no public call to fail another process's trial: the storage's is it.
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number},
                            skip_if_exists=False)
        recovered.append(trial.number)
    return recovered


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def finished(trials: list[FrozenTrial]) -> int:
    """How many of ``trials`` finished (complete or pruned): what ``n_trials`` counts."""
    return sum(t.state in FINISHED for t in trials)


def remaining(trials: list[FrozenTrial], n_trials: int) -> int:
    """How many more trials to start so that finished (complete or pruned) plus running
    ones reach ``n_trials``."""
    counted = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
    return max(0, n_trials - counted)


def builder_defaults(target: str, section: Mapping) -> dict:
    """The keyword defaults of the builder the section's ``arch`` names (what an empty
    ``hparams`` means); {} for an unknown ``arch``."""
    if target == "classifier":
        from pipeline.core.models.classifiers import BUILDERS
    else:
        from pipeline.core.models.estimators import ESTIMATORS as BUILDERS
    builder = BUILDERS.get(section.get("arch"))
    if builder is None:
        return {}
    return {name: p.default for name, p in inspect.signature(builder).parameters.items()
            if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}


def defaults_in_space(section: Mapping, space: list[Dimension], fields: Iterable[str],
                      builder: Mapping) -> dict | None:
    """The section's current values of the searched names (builder keywords it leaves out
    at the ``builder`` defaults), when every one lies in the space, so the defaults can be
    trial 0, the baseline; else None."""
    hparams = dict(builder) | (section.get("hparams") or {})
    values = {}
    for dim in space:
        if dim.name in fields:
            value = section.get(dim.name)
        else:
            value = hparams.get(dim.name)
        if value is None:
            return None
        inside = (value in dim.choices) if dim.choices is not None else (
            dim.low <= value <= dim.high)
        if not inside:
            return None
        values[dim.name] = value
    return values


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised),
    sorted by the first coordinate; NaN points are never on the front."""
    valid = [i for i, (a, b) in enumerate(points) if not (math.isnan(a) or math.isnan(b))]
    front = [i for i in valid if not any(
        points[j][0] >= points[i][0] and points[j][1] >= points[i][1] and points[j] != points[i]
        for j in valid)]
    return sorted(front, key=lambda i: points[i][0])


def fastest_meeting_floor(trials: list[FrozenTrial], floor: float) -> tuple[FrozenTrial, bool]:
    """Among complete two-objective trials (values = (fidelity, maps/s)), the fastest whose
    fidelity reaches ``floor``; when none does, the most faithful. Returns (trial, met)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not complete:
        raise ValueError("the study has no complete trial to choose from")
    meeting = [t for t in complete if t.values[0] >= floor]
    if meeting:
        return max(meeting, key=lambda t: (t.values[1], t.values[0])), True
    return max(complete, key=lambda t: (t.values[0], t.values[1])), False

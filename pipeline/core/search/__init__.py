"""Hyperparameter searches with Optuna, knowing nothing of files or tracking:

- ``space``: the searched dimensions (``tune.<target>.space``) and how a trial's
  suggestions become a params section or ``dvc exp run -S`` overrides;
- ``studies``: opening a study (storage, sampler, pruner), the baseline trial, recovering
  a killed worker's trials, and the picks among finished trials;
- ``objectives``: what a classifier or estimator trial trains and returns, recorded
  through what the caller passes in.

Importing this package is light (Optuna only); the objectives import Keras when built.
"""

from pipeline.core.search.objectives import classifier_objective, estimator_objective, maps_per_s
from pipeline.core.search.space import Dimension, apply, overrides, parse_space, suggest
from pipeline.core.search.studies import (
    FINISHED,
    WORKER_ATTR,
    builder_defaults,
    copy_study_between,
    defaults_in_space,
    fail_stale_trials,
    fastest_meeting_floor,
    finished,
    has_heartbeat,
    mark_worker,
    open_storage,
    open_study,
    pareto_front,
    recover_killed_trials,
    remaining,
)

__all__ = [
    "FINISHED", "WORKER_ATTR", "Dimension", "apply", "builder_defaults", "classifier_objective",
    "copy_study_between",
    "defaults_in_space", "estimator_objective", "fail_stale_trials", "fastest_meeting_floor",
    "finished", "has_heartbeat", "maps_per_s",
    "mark_worker", "open_storage", "open_study", "overrides", "pareto_front", "parse_space",
    "recover_killed_trials", "remaining", "suggest",
]

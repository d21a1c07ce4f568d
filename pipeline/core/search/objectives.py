"""The objectives of the two studies, and the explainer timing the estimator study maximises.

An objective trains one trial's model on in-memory splits and returns its score(s); it
records nothing itself. The caller passes how to record a trial: ``trial_context(trial,
values)``, a context manager the training runs inside (e.g. a tracking run with the trial's
``values`` as params, ended by how the trial ended), ``log_metrics(dict)``, called inside it
with the trial's figures, and Keras ``callbacks`` for every fit (e.g. a per-epoch logger).
By default a trial is recorded nowhere.

Splits: {"train": split, "val": split}, each with images (N, H, W, C) float32 in [0, 1] and
labels (N,) class indices; for the estimator also the exact maps (N, H, W) in [-1, 1] and
target (N,), the class each map explains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.core.params import ClassifierParams, EstimatorParams, TuneTarget
from pipeline.core.search.space import apply, parse_space, suggest
from pipeline.core.search.studies import mark_worker

TrialContext = Callable[[object, dict], contextlib.AbstractContextManager]


def _unrecorded(trial, values: dict) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _ignore(metrics: dict) -> None:
    return None


def classifier_objective(params: dict, spec: TuneTarget, splits: dict, geometry, *,
                         trial_context: TrialContext = _unrecorded,
                         log_metrics: Callable[[dict], None] = _ignore,
                         callbacks: Sequence = ()) -> Callable:
    """The classifier study's objective: train ``params["classifier"]`` (a params section)
    with the trial's suggestions from ``spec.space`` for ``spec.epochs`` on stamps of
    ``geometry`` (a ``StampGeometry``), reporting val_accuracy each epoch to the pruner;
    maximise the validation accuracy in [0, 1] of the restored (best val_loss) weights."""
    import keras
    from optuna_integration import KerasPruningCallback

    from pipeline.core.models.training import fit_classifier

    space = parse_space(spec.space, "classifier")
    fields = {f.name for f in dataclasses.fields(ClassifierParams)}

    def objective(trial):
        values = suggest(trial, space)
        section = apply(params["classifier"], values, fields)
        section["epochs"] = spec.epochs
        cfg = ClassifierParams.from_dict(section)
        keras.backend.clear_session()
        mark_worker(trial)
        with trial_context(trial, values):
            pruning = KerasPruningCallback(trial, "val_accuracy")
            model, history, seconds = fit_classifier(cfg, splits, geometry,
                                                     callbacks=[pruning, *callbacks])
            probabilities = model.predict(splits["val"]["images"], batch_size=4096, verbose=0)
            accuracy = float((probabilities.argmax(axis=1) == splits["val"]["labels"]).mean())
            log_metrics({"val_accuracy_restored": accuracy, "train_seconds": seconds,
                         "epochs_run": len(history["loss"]),
                         "parameters": model.count_params()})
        return accuracy

    return objective


def estimator_objective(params: dict, spec: TuneTarget, splits: dict, classifier, *,
                        trial_context: TrialContext = _unrecorded,
                        log_metrics: Callable[[dict], None] = _ignore,
                        callbacks: Sequence = ()) -> Callable:
    """The estimator study's objective: train ``params["estimator"]`` with the trial's
    suggestions for ``spec.epochs`` to explain ``classifier`` (a Keras model); maximise
    (validation fidelity ``spec.fidelity``, explainer maps/s on the first
    ``spec.speed_batch`` val stamps). A trial whose fidelity cannot be measured returns NaN
    for it, which fails that trial, not the study."""
    import keras

    from pipeline.core import fidelity
    from pipeline.core.explain import compile_explainer
    from pipeline.core.models import estimators
    from pipeline.core.models.training import condition_arrays, fit_estimator

    space = parse_space(spec.space, "estimator")
    fields = {f.name for f in dataclasses.fields(EstimatorParams)}
    class_means = fidelity.class_mean_maps(splits["train"]["maps"], splits["train"]["target"])
    speed_stamps = splits["val"]["images"][:spec.speed_batch]
    # computed once per condition kind for the whole study: the classifier never changes
    conditions: dict[str, dict[str, np.ndarray]] = {}

    def condition_of(kind: str) -> dict[str, np.ndarray]:
        if kind not in conditions:
            conditions[kind] = {name: condition_arrays(classifier, kind, split["images"])
                                for name, split in splits.items()}
        return conditions[kind]

    def objective(trial):
        values = suggest(trial, space)
        section = apply(params["estimator"], values, fields)
        section.update(epochs=spec.epochs, train_limit=0)  # the splits are already limited
        cfg = EstimatorParams.from_dict(section)
        keras.backend.clear_session()
        mark_worker(trial)
        with trial_context(trial, values):
            condition = condition_of(cfg.condition)
            trial_splits = {name: {**split, "condition": condition[name]}
                            for name, split in splits.items()}
            model, history, seconds = fit_estimator(cfg, classifier, trial_splits,
                                                    callbacks=list(callbacks))
            val = trial_splits["val"]
            estimate = model.predict([val["images"], val["condition"]], batch_size=4096,
                                     verbose=0)
            report = fidelity.fidelity_report(estimate, val["maps"], val["labels"],
                                              val["target"], class_means)
            score = report["headline"][spec.fidelity]
            explain = compile_explainer(estimators.explainer(classifier, model, cfg.condition))
            speed = maps_per_s(explain, speed_stamps)
            log_metrics({"train_seconds": seconds, "epochs_run": len(history["loss"]),
                         "parameters": model.count_params(), "maps_per_s": speed,
                         **{f"val_{k}": float(v) for k, v in report["headline"].items()
                            if isinstance(v, (int, float)) and v is not None}})
        # an unmeasurable fidelity (no non-trivial bogus maps) fails the trial, not the study
        return (float("nan") if score is None else float(score)), speed

    return objective


def maps_per_s(explain, stamps: np.ndarray, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of the compiled explainer ``explain``
    (``compile_explainer``'s function) on ``stamps`` (N, H, W, C) float32, after a warm-up
    call (which traces it), in maps per second."""
    from pipeline.core.explain import predict_maps

    predict_maps(explain, stamps)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict_maps(explain, stamps)
        best = min(best, time.perf_counter() - start)
    return len(stamps) / best

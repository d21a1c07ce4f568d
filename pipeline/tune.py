"""DVC stages ``tune_classifier`` / ``tune_estimator`` (tuning/dvc.yaml): Optuna searches.

    python -m pipeline.tune classifier|estimator [--workers N] [--n-trials N]

Classifier study: maximise validation accuracy (median pruning on val_accuracy, through
optuna-integration's Keras callback). Estimator study: maximise validation fidelity (the MSE
skill over the class-mean map, or the bogus class's median r on non-trivial maps) AND maps/s
of the explainer on a fixed batch; the pick is the fastest trial above
``tune.estimator.fidelity_floor`` on the Pareto front.

Studies live in Optuna's JournalStorage at ``tune.journal`` (several processes on one
machine share it safely), or at any storage URL from ``OPTUNA_STORAGE`` or
``tune.storage``. ``--workers N`` starts N-1 more worker processes on the same study; a
study resumes where it stopped, and trials of a killed worker are marked failed and their
parameters queued again. Each trial is an MLflow run nested under one parent run per study.
Writes ``tuning/best_<target>.yaml`` (the best parameters as a params section and as a
``dvc exp run`` command) and, for the estimator, ``tuning/estimator_pareto.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from pipeline.core import search, tracking
from pipeline.core.params import (
    ClassifierParams,
    EstimatorParams,
    PathsParams,
    TuneParams,
    TuneTarget,
)
from pipeline.io import atomic_paths, load_params, load_split, run_stage

TARGETS = ("classifier", "estimator")
OUT_DIR = Path("tuning")
PARENT_RUN_ATTR = "mlflow_parent_run_id"
WORKER_ATTR = "worker"
STORAGE_ENV = "OPTUNA_STORAGE"


def storage_for(cfg: TuneParams):
    """``OPTUNA_STORAGE``, else ``tune.storage``, else a JournalStorage on ``tune.journal``
    (file locks make it safe for several processes on one machine)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = os.environ.get(STORAGE_ENV) or cfg.storage
    if url:
        return url
    journal = Path(cfg.journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))


def open_study(target: str, spec: TuneTarget, cfg: TuneParams, storage, worker_index: int = 0):
    """Create or load the study; each worker's TPE sampler gets its own seed so parallel
    workers do not propose the same first random trials."""
    import optuna

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


def recover_killed_trials(study) -> list[int]:
    """Mark RUNNING trials whose worker process (on this machine) is gone as FAIL and queue
    their parameters again; returns their numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
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
    except PermissionError:
        return True
    return True


def builder_defaults(target: str, section: dict) -> dict:
    """The keyword defaults of the builder the section's ``arch`` names (what an empty
    ``hparams`` means)."""
    import inspect

    if target == "classifier":
        from pipeline.core.models.classifiers import BUILDERS
    else:
        from pipeline.core.models.estimators import ESTIMATORS as BUILDERS
    builder = BUILDERS.get(section.get("arch"))
    if builder is None:
        return {}
    return {name: p.default for name, p in inspect.signature(builder).parameters.items()
            if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}


def defaults_in_space(section: dict, space: list[search.Dimension], fields,
                      builder: dict) -> dict | None:
    """The section's current values of the searched names (builder keywords it leaves out
    at the ``builder`` defaults), when every one lies in the space, so the defaults can be
    trial 0, the baseline; else None."""
    hparams = builder | (section.get("hparams") or {})
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


@contextlib.contextmanager
def trial_run(trial, values: dict, parent_run_id: str, target: str):
    """A nested MLflow run for one trial; a pruned trial ends as KILLED, tagged PRUNED."""
    import mlflow
    import optuna

    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    # Not `with start_run()`: its exit would end whatever run is active after a pruned
    # trial ended its own, i.e. the study's parent run in the coordinating process.
    run = mlflow.start_run(run_name=f"{target} trial {trial.number}", nested=True,
                           parent_run_id=parent_run_id,
                           tags={"optuna_study": trial.study.study_name,
                                 "optuna_trial": str(trial.number), "stage": f"tune_{target}"})
    try:
        mlflow.log_params(values)
        yield run
    except optuna.TrialPruned:
        mlflow.set_tag("optuna_state", "PRUNED")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.set_tag("optuna_state", "FAIL")
        mlflow.end_run(status="FAILED")
        raise
    mlflow.set_tag("optuna_state", "COMPLETE")
    mlflow.end_run()


def classifier_objective(params: dict, spec: TuneTarget, splits: dict, parent_run_id: str):
    """Maximise the validation accuracy of the restored (best val_loss) weights."""
    import keras
    from optuna_integration import KerasPruningCallback

    from pipeline.train_classifier import fit_classifier

    space = search.parse_space(spec.space, "classifier")
    fields = {f.name for f in dataclasses.fields(ClassifierParams)}

    def objective(trial):
        values = search.suggest(trial, space)
        section = search.apply(params["classifier"], values, fields)
        section["epochs"] = spec.epochs
        cfg = ClassifierParams.from_dict(section)
        keras.backend.clear_session()
        with trial_run(trial, values, parent_run_id, "classifier"):
            import mlflow

            pruning = KerasPruningCallback(trial, "val_accuracy")
            model, history, seconds = fit_classifier(
                cfg, splits, callbacks=[pruning, tracking.epoch_logger()])
            probabilities = model.predict(splits["val"]["images"], batch_size=4096, verbose=0)
            accuracy = float((probabilities.argmax(axis=1) == splits["val"]["labels"]).mean())
            mlflow.log_metrics({"val_accuracy_restored": accuracy, "train_seconds": seconds,
                                "epochs_run": len(history["loss"]),
                                "parameters": model.count_params()})
        return accuracy

    return objective


def estimator_objective(params: dict, spec: TuneTarget, splits: dict, classifier,
                        parent_run_id: str):
    """Maximise (validation fidelity, explainer maps/s on ``spec.speed_batch`` stamps)."""
    import keras

    from pipeline.core import fidelity
    from pipeline.core.models import estimators
    from pipeline.serving import compile_explainer
    from pipeline.train_estimator import fit_estimator

    space = search.parse_space(spec.space, "estimator")
    fields = {f.name for f in dataclasses.fields(EstimatorParams)}
    class_means = fidelity.class_mean_maps(splits["train"]["maps"], splits["train"]["target"])
    speed_stamps = splits["val"]["images"][:spec.speed_batch]
    conditions: dict[str, dict[str, np.ndarray]] = {}

    def condition_of(kind: str) -> dict[str, np.ndarray]:
        if kind not in conditions:
            conditioner = estimators.condition_model(classifier, kind)
            conditions[kind] = {name: conditioner.predict(split["images"], batch_size=4096,
                                                          verbose=0)
                                for name, split in splits.items()}
        return conditions[kind]

    def objective(trial):
        values = search.suggest(trial, space)
        section = search.apply(params["estimator"], values, fields)
        section.update(epochs=spec.epochs, train_limit=0)  # the splits are already limited
        cfg = EstimatorParams.from_dict(section)
        keras.backend.clear_session()
        with trial_run(trial, values, parent_run_id, "estimator"):
            import mlflow

            condition = condition_of(cfg.condition)
            trial_splits = {name: {**split, "condition": condition[name]}
                            for name, split in splits.items()}
            model, history, seconds = fit_estimator(cfg, classifier, trial_splits,
                                                    callbacks=[tracking.epoch_logger()])
            val = trial_splits["val"]
            estimate = model.predict([val["images"], val["condition"]], batch_size=4096,
                                     verbose=0)
            report = fidelity.fidelity_report(estimate, val["maps"], val["labels"],
                                              val["target"], class_means)
            score = report["headline"][spec.fidelity]
            explain = compile_explainer(estimators.explainer(classifier, model, cfg.condition))
            maps_per_s = _maps_per_s(explain, speed_stamps)
            mlflow.log_metrics({"train_seconds": seconds, "epochs_run": len(history["loss"]),
                                "parameters": model.count_params(), "maps_per_s": maps_per_s,
                                **{f"val_{k}": float(v) for k, v in report["headline"].items()
                                   if isinstance(v, (int, float)) and v is not None}})
        # an unmeasurable fidelity (no non-trivial bogus maps) fails the trial, not the study
        return (float("nan") if score is None else float(score)), maps_per_s

    return objective


def _maps_per_s(explain, stamps: np.ndarray, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of the compiled explainer on ``stamps`` (after a warm-up
    call), in maps per second."""
    from pipeline.serving import predict_maps

    predict_maps(explain, stamps)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict_maps(explain, stamps)
        best = min(best, time.perf_counter() - start)
    return len(stamps) / best


def load_data(target: str, paths: PathsParams, spec: TuneTarget):
    """The splits a study trains on, loaded once per worker: train cut to
    ``spec.train_limit``, val to ``spec.val_limit``; for the estimator also the exact maps
    and the classifier (whose maps they are)."""
    splits = {}
    for name in ("train", "val"):
        split = load_split(Path(paths.prepared_dir) / f"{name}.npz", ("images", "labels"))
        if target == "estimator":
            maps_file = Path(paths.occlusion_dir) / f"{name}.npz"
            exact = load_split(maps_file, ("maps", "target"))
            if len(exact["maps"]) != len(split["labels"]):
                raise ValueError(f"{maps_file}: {len(exact['maps'])} maps for "
                                 f"{len(split['labels'])} stamps (stale maps? run dvc repro)")
            split |= exact
        limit = spec.train_limit if name == "train" else spec.val_limit
        splits[name] = {key: value[:limit] if limit else value for key, value in split.items()}
    classifier = None
    if target == "estimator":
        from pipeline.io import load_classifier
        from pipeline.train_estimator import attach_conditions

        classifier = load_classifier(Path(paths.models_dir) / "classifier.keras")
        # the stale-maps check, on the default condition (the objective recomputes its own)
        attach_conditions(splits, classifier, "class", paths.occlusion_dir)
    return splits, classifier


def work(target: str, n_trials: int, worker_index: int, parent_run_id: str) -> None:
    """One worker: load the data once, then run trials until the study has ``n_trials``
    finished or running ones."""
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    cfg = TuneParams.from_dict(params.get("tune", {}))
    spec = getattr(cfg, target)
    splits, classifier = load_data(target, paths, spec)
    tracking.configure()
    study = open_study(target, spec, cfg, storage_for(cfg), worker_index)
    if target == "classifier":
        objective = classifier_objective(params, spec, splits, parent_run_id)
    else:
        objective = estimator_objective(params, spec, splits, classifier, parent_run_id)

    from optuna.trial import TrialState

    mine: list = []
    failures = 0
    while search.remaining(study.get_trials(deepcopy=False), n_trials) > 0:
        study.optimize(objective, n_trials=1, catch=(Exception,),
                       callbacks=[lambda _study, trial: mine.append(trial)])
        if mine and mine[-1].state == TrialState.FAIL:
            failures += 1
            if failures > n_trials:
                raise RuntimeError(f"study {spec.study!r}: {failures} failed trials in this "
                                   "worker; see the log above for the errors")


def coordinate(target: str, workers: int, n_trials: int | None) -> None:
    """Open (or resume) the study, recover killed trials, queue the defaults as the
    baseline, start ``workers`` worker processes (this one included) under one parent
    MLflow run, then write the best parameters."""
    params = load_params()
    cfg = TuneParams.from_dict(params.get("tune", {}))
    spec = getattr(cfg, target)
    n_trials = n_trials or spec.n_trials
    fields = {f.name for f in dataclasses.fields(
        ClassifierParams if target == "classifier" else EstimatorParams)}
    space = search.parse_space(spec.space, target)
    storage = storage_for(cfg)
    tracking.configure()
    import mlflow

    study = open_study(target, spec, cfg, storage)
    recovered = recover_killed_trials(study)
    if recovered:
        print(f"tune: trials {recovered} of a killed worker marked failed and queued again")
    if spec.enqueue_defaults and not study.trials:
        defaults = defaults_in_space(params[target], space, fields,
                                     builder_defaults(target, params[target]))
        if defaults is not None:
            study.enqueue_trial(defaults, user_attrs={"baseline": True})

    parent_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent_id and not _run_exists(parent_id):
        parent_id = None
    started = time.perf_counter()
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else f"tune_{target}",
                          tags={"stage": f"tune_{target}", "optuna_study": spec.study,
                                "git_commit": tracking.git_commit()}) as parent:
        study.set_user_attr(PARENT_RUN_ATTR, parent.info.run_id)
        if parent_id is None:  # MLflow params are write-once: a resumed study keeps its own
            mlflow.log_params({"n_trials": n_trials, "workers": workers,
                               **{f"space.{k}": str(v) for k, v in spec.space.items()}})
        else:
            mlflow.set_tag(f"resumed_{int(time.time())}", f"n_trials={n_trials} "
                           f"workers={workers}")
        command = [sys.executable, "-m", "pipeline.tune", target, "--worker-of",
                   parent.info.run_id, "--n-trials", str(n_trials)]
        others = [subprocess.Popen([*command, "--worker-index", str(i)])
                  for i in range(1, workers)]
        try:
            work(target, n_trials, 0, parent.info.run_id)
        finally:
            codes = [process.wait() for process in others]
        if any(codes):
            raise RuntimeError(f"tune: a worker process failed (exit codes {codes})")
        seconds = time.perf_counter() - started
        summary = summarise(target, spec, open_study(target, spec, cfg, storage), fields,
                            seconds, workers)
        mlflow.log_metrics({k: v for k, v in summary["figures"].items()
                            if isinstance(v, (int, float))})
        if target == "estimator":
            mlflow.log_artifact(str(OUT_DIR / "estimator_pareto.png"))
        mlflow.log_artifact(str(OUT_DIR / f"best_{target}.yaml"))
    print(f"tune {target}: {summary['headline']}")


def summarise(target: str, spec: TuneTarget, study, fields, seconds: float,
              workers: int) -> dict:
    """Write ``tuning/best_<target>.yaml`` (and the Pareto PNG); returns the summary."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    baseline = next((t for t in trials if t.user_attrs.get("baseline")
                     and t.state == TrialState.COMPLETE), None)
    figures: dict = {"wall_seconds_this_run": seconds, "workers": workers, **counts}
    if target == "classifier":
        best = study.best_trial
        figures.update(best_val_accuracy=best.value,
                       baseline_val_accuracy=baseline.value if baseline else None)
        headline = (f"best val accuracy {best.value:.4f} (trial {best.number}); defaults "
                    f"{_fmt(figures['baseline_val_accuracy'])}; {counts}")
        values = {"val_accuracy": best.value}
        met = None
    else:
        best, met = search.fastest_meeting_floor(trials, spec.fidelity_floor)
        figures.update({f"best_{spec.fidelity}": best.values[0],
                        "best_maps_per_s": best.values[1], "floor_met": met,
                        f"baseline_{spec.fidelity}": baseline.values[0] if baseline else None,
                        "baseline_maps_per_s": baseline.values[1] if baseline else None})
        headline = (f"pick trial {best.number}: {spec.fidelity} {best.values[0]:.4f}, "
                    f"{best.values[1]:.0f} maps/s (floor {spec.fidelity_floor} "
                    f"{'met' if met else 'NOT met'}); defaults {spec.fidelity} "
                    f"{_fmt(figures[f'baseline_{spec.fidelity}'])}, "
                    f"{_fmt(figures['baseline_maps_per_s'], '.0f')} maps/s; {counts}")
        values = {spec.fidelity: best.values[0], "maps_per_s": best.values[1]}
        _pareto_png(trials, spec, best)
    section = search.apply({}, best.params, fields)
    if not section["hparams"]:
        del section["hparams"]
    dotted = search.overrides(best.params, fields, target)
    command = "dvc exp run -n tuned-{} {}".format(
        target, " ".join(f"-S '{key}={_yaml_scalar(value)}'" for key, value in dotted.items()))
    best_file = {"study": spec.study, "trial": best.number, "values": values,
                 "trials": counts, target: section, "dvc_exp_run": command}
    if target == "estimator":
        best_file["meets_floor"] = met
    with atomic_paths(OUT_DIR / f"best_{target}.yaml") as (temp,):
        temp.write_text(f"# Best trial of the Optuna study {spec.study!r}; written by "
                        f"python -m pipeline.tune {target}.\n# Train with it: {command}\n"
                        + yaml.safe_dump(best_file, sort_keys=False))
    return {"figures": figures, "headline": headline}


def _pareto_png(trials, spec: TuneTarget, chosen) -> None:
    from optuna.trial import TrialState

    from pipeline.core.plots import pareto_figure

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    points = [(t.values[0], t.values[1]) for t in complete]
    front = search.pareto_front(points)
    figure = pareto_figure(points, front, complete.index(chosen), spec.fidelity,
                           spec.fidelity_floor, [t.number for t in complete])
    with atomic_paths(OUT_DIR / "estimator_pareto.png") as (temp,):
        figure.savefig(temp, format="png")


def _run_exists(run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_run(run_id)
    except MlflowException:
        return False
    return True


def _fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _yaml_scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--workers", type=int,
                        default=int(os.environ.get("TUNE_WORKERS", "0")) or None,
                        help="worker processes on the study (default: TUNE_WORKERS, else "
                             "tune.workers)")
    parser.add_argument("--n-trials", type=int, default=None,
                        help="finished trials the study should reach (default: "
                             "tune.<target>.n_trials)")
    parser.add_argument("--worker-of", metavar="PARENT_RUN_ID", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = max(1, (os.cpu_count() or 1) // (args.workers or 1))
    if args.worker_of:
        _limit_threads(int(os.environ.get("TUNE_THREADS", threads)))
        work(args.target, args.n_trials, args.worker_index, args.worker_of)
        return
    cfg = TuneParams.from_dict(load_params().get("tune", {}))
    workers = args.workers or cfg.workers
    os.environ["TUNE_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    _limit_threads(int(os.environ["TUNE_THREADS"]))
    coordinate(args.target, workers, args.n_trials)


def _limit_threads(threads: int) -> None:
    """Share the cores between the workers: each TensorFlow runtime gets ``threads``."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


if __name__ == "__main__":
    run_stage(main)

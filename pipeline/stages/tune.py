"""DVC stages ``tune_classifier`` / ``tune_estimator`` (tuning/dvc.yaml): Optuna searches.

    python -m pipeline.stages.tune classifier|estimator [--workers N] [--n-trials N]

Classifier study: maximise validation accuracy (median pruning on val_accuracy, through
optuna-integration's Keras callback). Estimator study: maximise validation fidelity (the MSE
skill over the class-mean map, or the bogus class's median r on non-trivial maps) AND maps/s
of the explainer on a fixed batch; the pick is the fastest trial above
``tune.estimator.fidelity_floor`` on the Pareto front.

Studies live in Optuna's JournalStorage at ``tune.journal`` (several processes on one
machine share it safely), or at any storage URL from ``OPTUNA_STORAGE`` or
``tune.storage`` (a database, e.g. PostgreSQL for workers on several machines: created
once here before the workers start). ``--workers N`` starts N-1 more worker processes on
the same study; a study resumes where it stopped. A killed worker's trial is failed and its
parameters queued again once: found by its PID on a journal, by its heartbeat going silent
(``tune.heartbeat_interval``, ``tune.grace_period``) on a database. Each trial is an MLflow
run nested under one parent run per study.
Writes ``tuning/best_<target>.yaml`` (the best parameters as a params section and as a
``dvc exp run`` command), ``tuning/studies/<target>.log`` (the whole study, copied into a
journal: a DVC output, pushed and pulled with the data; a stage whose working storage
lacks the study resumes from it) and, for the estimator, ``tuning/estimator_pareto.png``.

The studies, spaces and objectives are ``pipeline.core.search``; this module is their
glue: params, storage location, worker processes, MLflow runs and the summary files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.core import search
from pipeline.core.params import (
    ClassifierParams,
    EstimatorParams,
    PathsParams,
    TuneParams,
    TuneTarget,
)
from pipeline.glue import tracking
from pipeline.glue.artifacts import (
    check_maps_explain_predictions,
    load_model,
    load_prepared,
    load_stamps_and_maps,
    stamp_geometry,
)
from pipeline.glue.files import atomic_paths, load_params, run_stage

TARGETS = ("classifier", "estimator")
OUT_DIR = Path("tuning")
# each study's snapshot, a journal DVC caches and pushes: a teammate or a new clone pulls
# the studies with the data (dashboard, resuming); without it, the stage runs anew
STUDIES_DIR = OUT_DIR / "studies"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
STORAGE_ENV = "OPTUNA_STORAGE"


def storage_for(cfg: TuneParams):
    """``OPTUNA_STORAGE``, else ``tune.storage``, else a JournalStorage on ``tune.journal``
    (its folder made first); a database storage with the ``tune`` section's heartbeat."""
    url = os.environ.get(STORAGE_ENV) or cfg.storage
    if not url:
        Path(cfg.journal).parent.mkdir(parents=True, exist_ok=True)
    return search.open_storage(url, cfg.journal, cfg.heartbeat_interval, cfg.grace_period,
                               cfg.max_retry)


def objective_for(target: str, params: dict, spec: TuneTarget, splits: dict, classifier,
                  geometry, parent_run_id: str):
    """The study's objective, each trial recorded as an MLflow run nested under
    ``parent_run_id`` with its epochs' metrics."""
    import mlflow

    record = {"trial_context": functools.partial(tracking.trial_run,
                                                 parent_run_id=parent_run_id, target=target),
              "log_metrics": mlflow.log_metrics,
              "callbacks": [tracking.epoch_logger(f"tune_{target}")]}
    if target == "classifier":
        return search.classifier_objective(params, spec, splits, geometry, **record)
    return search.estimator_objective(params, spec, splits, classifier, **record)


def load_data(target: str, paths: PathsParams, spec: TuneTarget):
    """The splits a study trains on, loaded once per worker: train cut to
    ``spec.train_limit``, val to ``spec.val_limit``; for the estimator also the exact maps
    and the classifier (whose maps they are)."""
    names = ("train", "val")
    if target == "estimator":
        loaded = load_stamps_and_maps(paths.prepared_dir, paths.occlusion_dir, names,
                                      ("maps", "target"))
    else:
        loaded = load_prepared(paths.prepared_dir, names)
    splits = {}
    for name, split in loaded.items():
        limit = spec.train_limit if name == "train" else spec.val_limit
        splits[name] = {key: value[:limit] if limit else value for key, value in split.items()}
    classifier = None
    if target == "estimator":
        classifier = load_model(Path(paths.models_dir) / "classifier.keras")
        for name, split in splits.items():
            predicted = classifier.predict(split["images"], batch_size=4096, verbose=0)
            check_maps_explain_predictions(paths.occlusion_dir, name, split["target"],
                                           predicted.argmax(axis=1))
    return splits, classifier, stamp_geometry(paths.prepared_dir)


def work(target: str, n_trials: int, worker_index: int, parent_run_id: str) -> None:
    """One worker: load the data once, then run trials until the study has ``n_trials``
    finished ones. When the rest are running in other workers it waits, failing (and so
    queueing again) those whose worker is gone, so a killed worker's trial is run again
    by a live one."""
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    cfg = TuneParams.from_dict(params.get("tune", {}))
    spec = getattr(cfg, target)
    splits, classifier, geometry = load_data(target, paths, spec)
    tracking.configure()
    study = search.open_study(target, spec, cfg, storage_for(cfg), worker_index)
    objective = objective_for(target, params, spec, splits, classifier, geometry,
                              parent_run_id)

    from optuna.trial import TrialState

    mine: list = []
    failures = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        if search.finished(trials) >= n_trials:
            return
        if search.remaining(trials, n_trials) == 0:
            time.sleep(min(cfg.heartbeat_interval, 5))
            failed = search.fail_stale_trials(study)
            if failed:
                print(f"tune: trials {failed} of a gone worker failed and queued again")
            continue
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
    if target == "classifier" and \
            ClassifierParams.from_dict(params.get("classifier", {})).source == "file":
        raise ValueError("params.yaml: tune_classifier searches how to train a classifier, and "
                         "classifier.source is file (an imported model is not trained here)")
    fields = {f.name for f in dataclasses.fields(
        ClassifierParams if target == "classifier" else EstimatorParams)}
    space = search.parse_space(spec.space, target)
    storage = storage_for(cfg)
    experiment_id = tracking.configure()
    tracking.recover(experiment_id)
    import mlflow

    from pipeline.glue.processes import owner

    snapshot = STUDIES_DIR / f"{target}.log"
    if snapshot.is_file() and search.copy_study_between(
            spec.study, search.open_storage(None, str(snapshot)), storage):
        print(f"tune: study {spec.study!r} resumed from its snapshot {snapshot}")
    study = search.open_study(target, spec, cfg, storage)
    recovered = search.fail_stale_trials(study)
    if recovered:
        print(f"tune: trials {recovered} of a killed worker marked failed and queued again")
    if spec.enqueue_defaults and not study.trials:
        defaults = search.defaults_in_space(params[target], space, fields,
                                            search.builder_defaults(target, params[target]))
        if defaults is not None:
            study.enqueue_trial(defaults, user_attrs={"baseline": True})

    parent_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent_id and not _run_exists(parent_id):
        parent_id = None
    started = time.perf_counter()
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else f"tune_{target}",
                          tags={"stage": f"tune_{target}", "optuna_study": spec.study,
                                "git_commit": tracking.git_commit(), **owner()}) as parent:
        study.set_user_attr(PARENT_RUN_ATTR, parent.info.run_id)
        if parent_id is None:  # MLflow params are write-once: a resumed study keeps its own
            mlflow.log_params({"n_trials": n_trials, "workers": workers,
                               **{f"space.{k}": str(v) for k, v in spec.space.items()}})
        else:
            mlflow.set_tag(f"resumed_{int(time.time())}", f"n_trials={n_trials} "
                           f"workers={workers}")
        command = [sys.executable, "-m", "pipeline.stages.tune", target, "--worker-of",
                   parent.info.run_id, "--n-trials", str(n_trials)]
        others = [subprocess.Popen([*command, "--worker-index", str(i)])
                  for i in range(1, workers)]
        try:
            work(target, n_trials, 0, parent.info.run_id)
        finally:
            codes = [process.wait() for process in others]
        seconds = time.perf_counter() - started
        study = search.open_study(target, spec, cfg, storage)
        if any(codes):
            tracking.recover(experiment_id)  # a killed worker's trial run: FAILED, not RUNNING
            done = search.finished(study.get_trials(deepcopy=False))
            if done < n_trials:
                raise RuntimeError(f"tune: a worker process failed (exit codes {codes}) and "
                                   f"the study has {done} of {n_trials} finished trials")
            # a killed worker's trial was run again by the others: the study is whole
            print(f"tune: a worker process ended abnormally (exit codes {codes}); the "
                  f"study still reached {done} finished trials", file=sys.stderr)
        summary = summarise(target, spec, study, fields, seconds, workers)
        write_snapshot(spec.study, storage, snapshot)
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
                        f"python -m pipeline.stages.tune {target}.\n# Train with it: {command}\n"
                        + yaml.safe_dump(best_file, sort_keys=False))
    return {"figures": figures, "headline": headline}


def write_snapshot(study_name: str, storage, path: Path) -> None:
    """The study as it stands, copied into a new journal at ``path`` (replaced whole)."""
    with atomic_paths(path) as (temp,):
        temp.unlink()  # the journal starts from an empty file of its own making
        search.copy_study_between(study_name, storage, search.open_storage(None, str(temp)))


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
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages.tune",
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

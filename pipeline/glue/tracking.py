"""MLflow runs of every stage: where runs go, and how a run is started.

Default store: a SQLite database inside ``mlruns/`` at the *main* repository's root with
artifacts under ``mlruns/artifacts``. The root is found through git's common directory,
so ``dvc exp run --temp/--queue`` (which runs in a copy under ``.dvc/tmp/exps``) still logs
into the main store instead of a copy that is thrown away. ``MLFLOW_TRACKING_URI``
overrides the default, e.g. with a team's tracking server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

EXPERIMENT = "hits-occlusion"
STORE_DIR = "mlruns"


def project_root(start: str | Path | None = None) -> Path:
    """The main repository's root, also from a git worktree or a DVC experiment copy.

    The parent of git's common dir, else ``start``/cwd; when that lies in a DVC
    experiment copy (``<root>/.dvc/tmp/exps/...``, a separate clone made by
    ``dvc exp run --temp/--queue``), the repository that holds that ``.dvc``.
    """
    start = Path(start or os.getcwd()).resolve()
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=start, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        root = Path(common).parent
    except (OSError, subprocess.SubprocessError):
        root = start
    for folder in (root, *root.parents):
        if folder.name == "exps" and folder.parent.name == "tmp" and \
                folder.parent.parent.name == ".dvc":
            return folder.parent.parent.parent
    return root


def default_tracking_uri(root: str | Path) -> str:
    return f"sqlite:///{(Path(root) / STORE_DIR / 'mlflow.db').resolve()}"


def default_artifact_location(root: str | Path) -> str:
    return (Path(root) / STORE_DIR / "artifacts").resolve().as_uri()


def tracking_uri(root: str | Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else the project's embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(
        root or project_root())


# How long a tracking server may take to answer its health check before the command
# gives up: MLflow's own client retries an unreachable server for ~4 minutes.
REACH_TIMEOUT_S = 5.0


class StoreUnavailable(ValueError):
    """The tracking store named by a URI cannot be reached, or (for a reader) is absent."""


def check_store(uri: str, *, must_exist: bool = False, timeout: float = REACH_TIMEOUT_S):
    """Fail fast, in one line naming ``uri``: an ``http(s)`` tracking server that does not
    answer its ``/health`` within ``timeout`` s; with ``must_exist`` (commands that only
    read a store), a ``sqlite:///`` database or ``file:`` / plain store path that does not
    exist (MLflow would create an empty one)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout) as answer:  # noqa: S310
                if answer.status != 200:
                    raise StoreUnavailable(f"{uri}: the tracking server answered its health "
                                           f"check with HTTP {answer.status}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise StoreUnavailable(f"{uri}: no MLflow tracking server answers ({reason}); "
                                   "start it or point MLFLOW_TRACKING_URI elsewhere") from None
        return
    if not must_exist:
        return
    if parsed.scheme == "sqlite":
        # sqlite:///relative/path, sqlite:////absolute/path
        database = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        path = Path(database)
        if database and database != ":memory:" and not path.is_file():
            raise StoreUnavailable(f"{uri}: no MLflow store there ({path} does not exist); "
                                   "run dvc repro to make one, or name the right store")
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        if not path.exists():
            raise StoreUnavailable(f"{uri}: no MLflow store there ({path} does not exist); "
                                   "run dvc repro to make one, or name the right store")


def configure(root: str | Path | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id.

    Telemetry is switched off. With the default store the experiment's artifacts go to
    ``mlruns/artifacts``; with a user-given URI the server's own default applies.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # slow import: only stages that track pay for it

    root = Path(root or project_root())
    uri = tracking_uri(root)
    check_store(uri)
    # Not "is MLFLOW_TRACKING_URI set": mlflow.set_tracking_uri sets it for child processes.
    embedded = uri == default_tracking_uri(root)
    if embedded:
        (root / STORE_DIR).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = default_artifact_location(root) if embedded else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit(root: str | Path | None = None) -> str:
    """The checked-out commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    root = Path(root or project_root())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def flatten(params: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested mapping -> {"a.b.c": value}, the form MLflow params take."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextlib.contextmanager
def start_run(name: str, params: Mapping | None = None, tags: Mapping | None = None,
              root: str | Path | None = None) -> Iterator[object]:
    """Start an MLflow run named ``name`` (the stage's name), tagged with the git commit,
    with ``params`` flattened and logged; yields the active run."""
    import mlflow

    from pipeline.glue.processes import owner

    root = Path(root or project_root())
    experiment_id = configure(root)
    recover(experiment_id)
    all_tags = {"git_commit": git_commit(root), "stage": name, **owner(), **(tags or {})}
    with mlflow.start_run(run_name=name, tags=all_tags) as run:
        if params:
            mlflow.log_params(flatten(params))
        yield run


def fail_dead_runs(experiment_id: str) -> list[str]:
    """End as FAILED every RUNNING run of the experiment whose process (on this host) is
    gone, tagged ``failed_because``; returns their ids. Runs owned by live processes, by
    another host, or without owner tags (logged before they were recorded) stay as
    they are."""
    import mlflow

    from pipeline.glue.processes import PID_TAG, owner_state

    client = mlflow.MlflowClient()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        if owner_state(run.data.tags) != "dead":
            continue
        client.set_tag(run.info.run_id, "failed_because",
                       f"its process (pid {run.data.tags[PID_TAG]}) died before ending it")
        client.set_terminated(run.info.run_id, status="FAILED")
        ended.append(run.info.run_id)
    return ended


def recover(experiment_id: str) -> None:
    """What every stage does first: runs left RUNNING by dead processes are marked FAILED,
    then model versions whose stage never finished are deleted
    (``registry.remove_incomplete_versions``); one line on stderr for each."""
    import sys

    from pipeline.glue.completion import remove_incomplete_versions

    for run_id in fail_dead_runs(experiment_id):
        print(f"marked run {run_id} FAILED: its process died while it was RUNNING",
              file=sys.stderr)
    for name, version, why in remove_incomplete_versions():
        print(f"deleted {name} version {version}: {why}", file=sys.stderr)


def epoch_logger(stage: str = ""):
    """A Keras callback that logs every epoch's metrics (loss, val_loss, ...) to the
    active MLflow run, with the epoch as the step; fault point ``<stage>:epoch`` after
    each epoch's metrics are logged."""
    import keras
    import mlflow

    from pipeline.glue.processes import fault_point

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs:
                mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)
            fault_point(f"{stage}:epoch")

    return EpochLogger()


@contextlib.contextmanager
def trial_run(trial, values: Mapping, parent_run_id: str, target: str) -> Iterator[object]:
    """A nested MLflow run for one Optuna trial of the ``target`` study, under the study's
    run ``parent_run_id``, with the trial's ``values`` as params; it ends FINISHED (tagged
    ``optuna_state`` COMPLETE), KILLED when the trial is pruned (PRUNED), else FAILED
    (FAIL). Yields the run."""
    import mlflow
    import optuna

    from pipeline.glue.processes import owner

    # Not `with start_run()`: its exit would end whatever run is active after a pruned
    # trial ended its own, i.e. the study's parent run in the coordinating process.
    run = mlflow.start_run(run_name=f"{target} trial {trial.number}", nested=True,
                           parent_run_id=parent_run_id,
                           tags={"optuna_study": trial.study.study_name,
                                 "optuna_trial": str(trial.number), "stage": f"tune_{target}",
                                 **owner()})
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

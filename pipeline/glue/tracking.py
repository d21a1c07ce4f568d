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
# The MLflow UI's kind of experiment: model training (runs table, charts, Models), not GenAI.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


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


# Where the embedded SQLite store records absolute locations (its artifacts' folders).
LOCATION_COLUMNS = (("experiments", "artifact_location", "experiment_id"),
                    ("runs", "artifact_uri", "run_uuid"),
                    ("model_versions", "source", "name, version"),
                    ("model_versions", "storage_location", "name, version"),
                    ("logged_models", "artifact_location", "model_id"))


def reroot_store(root: str | Path) -> int:
    """Make the project's embedded store (``<root>/mlruns/mlflow.db``) point at its own
    artifacts after the project folder was moved or copied: every location recorded
    under ``<old root>/mlruns/`` (plain or ``file://``) is rewritten to ``<root>/mlruns/``.
    Returns the number of locations rewritten (0 when none moved or there is no store)."""
    import re
    import sqlite3

    root = Path(root).resolve()
    database = root / STORE_DIR / "mlflow.db"
    if not database.is_file():
        return 0
    recorded = re.compile(r"^(file://)?(/.*?)/" + STORE_DIR + "/")
    rewritten = 0
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column, key in LOCATION_COLUMNS:
            if table not in tables:
                continue
            keys = key.split(", ")
            rows = connection.execute(
                f"SELECT {column}, {key} FROM {table} WHERE {column} LIKE '%/{STORE_DIR}/%'")  # noqa: S608 (names from LOCATION_COLUMNS)
            for value, *ids in rows.fetchall():
                found = recorded.match(value)
                if not found or Path(found.group(2)) == root:
                    continue
                moved = f"{found.group(1) or ''}{root}/{STORE_DIR}/{value[found.end():]}"
                connection.execute(
                    f"UPDATE {table} SET {column} = ? WHERE "  # noqa: S608
                    + " AND ".join(f"{name} = ?" for name in keys), (moved, *ids))
                rewritten += 1
    return rewritten


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
        reroot_store(root)  # the project may have been moved or copied since
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = default_artifact_location(root) if embedded else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    if found is None or EXPERIMENT_KIND_TAG not in found.tags:
        # else the UI opens the experiment in its GenAI view, without the runs table
        mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG,
                                                 EXPERIMENT_KIND)
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


# The headline figures. Every run that has one logs it under the same name (whichever
# stage measured it), so the runs table and its charts compare stages and runs; the full
# figures go into each run's JSON artifact instead of hundreds of metrics.
CLASSIFIER_HEADLINE = ("accuracy", "roc_auc", "f1", "precision", "recall", "loss")
FIDELITY_HEADLINE = {"real_median_r": "real_median_r", "bogus_median_r": "bogus_median_r",
                     "real_mean_ssim": "real_mean_ssim", "bogus_mean_ssim": "bogus_mean_ssim",
                     "real_mse_skill": "real_mse_skill", "bogus_mse_skill": "bogus_mse_skill",
                     "mse_skill": "mse_skill_overall"}
SELECTIVE_HEADLINE = {"exact_share": "exact_share", "doubt_spearman": "spearman_doubt_error",
                      "bad_share_estimate": "bad_share_estimate",
                      "bad_share_delivered": "bad_share_delivered",
                      "p0_1_r_estimate": "p0_1_r_estimate",
                      "p0_1_r_delivered": "p0_1_r_delivered"}
# The most metric names one run may log: more and the runs table and its charts stop
# being readable (checked by the tests on every stage's run).
METRICS_PER_RUN = 60


def classifier_metrics(figures: Mapping, prefix: str = "test_") -> dict[str, float]:
    """``test_accuracy``, ``test_roc_auc``, ... of ``classification_figures`` of a split."""
    return _picked(figures, {f"{prefix}{key}": key for key in CLASSIFIER_HEADLINE})


def fidelity_metrics(headline: Mapping) -> dict[str, float]:
    """``real_median_r``, ``bogus_median_r``, ``real_mean_ssim``, ``bogus_mean_ssim``,
    ``mse_skill``, ... of a fidelity report's ``headline``."""
    return _picked(headline, FIDELITY_HEADLINE)


def selective_metrics(report: Mapping) -> dict[str, float]:
    """``doubt_spearman``, ``bad_share_estimate``, ``bad_share_delivered``,
    ``p0_1_r_delivered``, ... of a selective report (the figures it has)."""
    return _picked(report, SELECTIVE_HEADLINE)


def _picked(figures: Mapping, names: Mapping[str, str]) -> dict[str, float]:
    """{metric name: float(figures[key])} for the finite numbers among ``names``' keys."""
    out = {}
    for name, key in names.items():
        value = figures.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                value == value and abs(value) != float("inf"):
            out[name] = float(value)
    return out


def rounded(value, digits: int = 4) -> str:
    """A tag value as a reader wants it: floats to ``digits`` significant digits."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def log_split_inputs(folder: str | Path, splits: Mapping[str, Mapping], source: str,
                     features: str = "images", targets: str = "labels") -> dict[str, str]:
    """Log each split file ``<folder>/<split>.npz`` the run reads as an MLflow dataset
    input of the active run: name ``<source>/<split>`` (e.g. ``synthetic/train``), digest
    the first 32 hex digits of the file's sha256 (the whole one in the input's ``sha256``
    tag), context ``training`` / ``validation`` / ``test``, and the arrays ``features``
    (N, ...) and ``targets`` (N,) of ``splits[split]`` for the schema and profile.
    Returns {split: sha256}."""
    import mlflow

    from pipeline.glue.files import file_sha256

    contexts = {"train": "training", "val": "validation", "test": "test"}
    digests = {}
    for name, split in splits.items():
        path = Path(folder) / f"{name}.npz"
        digests[name] = file_sha256(path)
        dataset = mlflow.data.from_numpy(split[features], targets=split.get(targets),
                                         source=str(path), name=f"{source}/{name}",
                                         digest=digests[name][:32])
        mlflow.log_input(dataset, context=contexts.get(name, name),
                         tags={"sha256": digests[name]})
    return digests


def logged_model_id(version) -> str | None:
    """The id (``m-...``) of the logged model behind a registered ``ModelVersion``: its
    ``model_id``, which a SQLite registry does not keep, else read from its source
    ``models:/m-...``; None for a version registered from a plain path."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    if source.startswith("models:/m-") and "/" not in source[len("models:/"):]:
        return source[len("models:/"):]
    return None


def judged_models(versions) -> dict[str, str]:
    """{registered model name: logged model id} of the model versions (dicts with
    ``name`` and ``version``, as the training stages record them) that the active run
    judges; each is logged as an input model of the run, so the run links to it."""
    import mlflow
    from mlflow.entities import LoggedModelInput
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    ids = {}
    for entry in versions:
        if not entry.get("name") or not entry.get("version"):
            continue
        try:
            found = client.get_model_version(entry["name"], str(entry["version"]))
        except MlflowException:
            continue  # not in this store: nothing to link
        if model_id := logged_model_id(found):
            ids[entry["name"]] = model_id
    if ids:
        client.log_inputs(mlflow.active_run().info.run_id,
                          models=[LoggedModelInput(model_id) for model_id in ids.values()])
    return ids


def epoch_logger(stage: str = ""):
    """A Keras callback that logs every epoch's metrics (loss, val_loss, ...) to the
    active MLflow run, with the epoch (from 1) as the step; fault point ``<stage>:epoch``
    after each epoch's metrics are logged. Step 0 is left to the final figures: MLflow
    links a run's step-0 metrics to the model it logs."""
    import keras
    import mlflow

    from pipeline.glue.processes import fault_point

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs:
                mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch + 1)
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

"""Which registered model versions may be used: those whose stage finished.

A version is registered while its stage's run is open, tagged ``pipeline.complete =
false`` at once (``registry``), and tagged ``true`` by the stage's very last act, after its
outputs and metrics are written (``mark_complete``). A stage killed in between leaves an
incomplete version: every consumer refuses it (``check_complete``), and the next stage to
start deletes it (``remove_incomplete_versions``, called by ``tracking.recover``). Versions
registered before the tag existed count as complete when their run FINISHED.

Light on purpose (MLflow's client only): every tracking stage imports it.
"""

from __future__ import annotations

COMPLETE_TAG = "pipeline.complete"
# The models the stages register: those whose incomplete versions are cleaned up.
REGISTERED_NAMES = ("hits-classifier", "occlusion-estimator")


def mark_complete(version) -> None:
    """Tag the ``ModelVersion`` complete: its stage's last act, after every output."""
    import mlflow

    mlflow.MlflowClient().set_model_version_tag(version.name, str(version.version),
                                                COMPLETE_TAG, "true")


def is_complete(client, version) -> bool:
    """Whether the ``ModelVersion``'s stage finished: its tag ``pipeline.complete`` is
    ``true``; without the tag (registered before it existed), whether its run FINISHED;
    a version without a run (registered by hand) counts as complete."""
    from mlflow.exceptions import MlflowException

    if COMPLETE_TAG in version.tags:
        return version.tags[COMPLETE_TAG] == "true"
    if not version.run_id:  # registered by hand, not by a stage: nothing to judge it by
        return True
    try:
        return client.get_run(version.run_id).info.status == "FINISHED"
    except MlflowException:
        return False


def check_complete(client, version, source: str) -> None:
    """``ValueError`` naming ``source`` when the version's stage never finished."""
    if not is_complete(client, version):
        raise ValueError(f"{source}: {version.name} version {version.version} is incomplete "
                         "(the stage that registered it did not finish); it is deleted when "
                         "the next stage starts: rerun dvc repro")


def complete_version(client, name: str, model: str):
    """The ``ModelVersion`` of registered model ``name`` that ``model`` names (a version
    number or an alias), checked complete (``ValueError`` otherwise; MLflow's error when
    there is no such version)."""
    version = (client.get_model_version(name, model) if model.isdigit()
               else client.get_model_version_by_alias(name, model))
    check_complete(client, version, f"models:/{name}/{version.version}")
    return version


def remove_incomplete_versions(names=REGISTERED_NAMES) -> list[tuple[str, str, str]]:
    """Delete the incomplete versions of the registered models ``names`` whose stage is
    dead; returns (name, version, why) of each. A version is kept while the process of
    its run is alive (its stage is still at work), when its run's owner is on another
    host and the run is still RUNNING, and when it holds an alias (someone chose it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.glue.processes import owner_state

    client = mlflow.MlflowClient()
    removed = []
    for name in names:
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            continue
        for version in versions:
            if is_complete(client, version):
                continue
            try:
                run = client.get_run(version.run_id)
                state, status = owner_state(run.data.tags), run.info.status
            except MlflowException:
                state, status = "dead", "deleted"
            if state == "alive" or (state == "unknown" and status == "RUNNING"):
                continue
            if client.get_model_version(name, version.version).aliases:
                continue
            client.delete_model_version(name, version.version)
            removed.append((name, str(version.version),
                            f"its stage stopped before it was complete (run {status})"))
    return removed

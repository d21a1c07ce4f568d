"""The one way a model enters the MLflow registry: logged to the active run with a
signature, its requirements pinned, registered as a new version and tagged.

Two flavours: the classifier as a Keras (``mlflow.tensorflow``) model, the estimator as a
self-contained pyfunc (``pipeline.glue.pyfunc``) that holds the Keras explainer and this
package's code, logged as "models from code" (no pickle in the store).

Completion. A version is registered while its stage's run is open, tagged
``pipeline.complete = false`` at once, and tagged ``true`` by the stage's very last act,
after its outputs and metrics are written (``mark_complete``). A stage killed in between
leaves an incomplete version: every consumer refuses it (``check_complete``), and the next
stage to start deletes it (``remove_incomplete_versions``). Versions registered before the
tag existed count as complete when their run FINISHED.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

COMPLETE_TAG = "pipeline.complete"
# The models the stages register: those whose incomplete versions are cleaned up.
REGISTERED_NAMES = ("hits-classifier", "occlusion-estimator")

# What a logged model needs at serving time, pinned to the versions installed here
# (stating them skips MLflow's slow requirement inference).
SERVING_PACKAGES = ("tensorflow-cpu", "keras", "numpy", "mlflow")


def pinned_requirements(*packages: str) -> list[str]:
    """``name==version`` of installed ``packages``."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in packages]


def register_keras_model(model, name: str, registered_model_name: str, example, *,
                         tags: Mapping | None = None):
    """Log the Keras ``model`` (a classifier: stamps -> probabilities) to the active run
    with a signature inferred on ``example`` (a small batch of stamps), register it and
    tag the version. Returns the registered ``ModelVersion``."""
    import mlflow
    from mlflow.models import infer_signature

    from pipeline.core.models import imported, layers

    signature = infer_signature(example, model.predict(example, verbose=0))
    custom_objects = {f"pipeline>{cls.__name__}": cls for cls in
                      (layers.SelectChannels, layers.RotationStack, layers.RotationPool,
                       imported.ClassProbabilities, imported.EmbeddedSavedModel)}
    info = mlflow.tensorflow.log_model(
        model, name=name, signature=signature, input_example=example,
        custom_objects=custom_objects, registered_model_name=registered_model_name,
        pip_requirements=pinned_requirements(*SERVING_PACKAGES))
    return _tagged_version(registered_model_name, info.registered_model_version, tags)


def register_explainer(explainer_path: str | Path, name: str, registered_model_name: str,
                       example, *, tags: Mapping | None = None):
    """Log the Keras explainer saved at ``explainer_path`` (stamps -> maps) to the active
    run as the ``pyfunc.OcclusionEstimator`` pyfunc, with this package's code and a
    signature taken from the explainer's own input and output shapes; register it and tag
    the version. Returns the registered ``ModelVersion``."""
    import mlflow

    from pipeline.glue import pyfunc, pyfunc_model
    from pipeline.glue.artifacts import load_model

    explainer = load_model(explainer_path, made_by="train_estimator")
    package = Path(pyfunc.__file__).resolve().parents[1]  # the whole `pipeline` package
    info = mlflow.pyfunc.log_model(
        # models from code: the store holds this file, not a pickled instance
        name=name, python_model=str(Path(pyfunc_model.__file__).resolve()),
        artifacts={pyfunc.ARTIFACT_KEY: str(explainer_path)}, code_paths=[str(package)],
        signature=pyfunc.signature(explainer), input_example=np.asarray(example, np.float32),
        registered_model_name=registered_model_name,
        pip_requirements=pinned_requirements(*SERVING_PACKAGES))
    return _tagged_version(registered_model_name, info.registered_model_version, tags)


def _tagged_version(registered_model_name: str, version: str | int,
                    tags: Mapping | None = None):
    """The registered ``ModelVersion``, after setting ``tags`` on it."""
    import mlflow

    client = mlflow.MlflowClient()
    # first of all: the version is not to be used until its stage says it is complete
    client.set_model_version_tag(registered_model_name, str(version), COMPLETE_TAG, "false")
    for key, value in (tags or {}).items():
        client.set_model_version_tag(registered_model_name, str(version), key, str(value))
    return client.get_model_version(registered_model_name, str(version))


def mark_complete(version) -> None:
    """Tag the ``ModelVersion`` complete: its stage's last act, after every output."""
    import mlflow

    mlflow.MlflowClient().set_model_version_tag(version.name, str(version.version),
                                                COMPLETE_TAG, "true")


def is_complete(client, version) -> bool:
    """Whether the ``ModelVersion``'s stage finished: its tag ``pipeline.complete`` is
    ``true``; without the tag (registered before it existed), whether its run FINISHED."""
    from mlflow.exceptions import MlflowException

    if COMPLETE_TAG in version.tags:
        return version.tags[COMPLETE_TAG] == "true"
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

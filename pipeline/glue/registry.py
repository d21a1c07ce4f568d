"""The one way a model enters the MLflow registry: logged to the active run with a
signature, its requirements pinned, registered as a new version and tagged.

Two flavours: the classifier as a Keras (``mlflow.tensorflow``) model, the estimator as a
self-contained pyfunc (``pipeline.glue.pyfunc``) that holds the Keras explainer and this
package's code, logged as "models from code" (no pickle in the store).

Every version is tagged ``pipeline.complete = false`` at once; the stage tags it ``true``
as its last act (``pipeline.glue.completion``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.glue.completion import COMPLETE_TAG
from pipeline.glue.tracking import rounded

# What a logged model needs at serving time, pinned to the versions installed here
# (stating them skips MLflow's slow requirement inference).
SERVING_PACKAGES = ("tensorflow-cpu", "keras", "numpy", "mlflow")


def pinned_requirements(*packages: str) -> list[str]:
    """``name==version`` of installed ``packages``."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in packages]


def register_keras_model(model, name: str, registered_model_name: str, example, *,
                         tags: Mapping | None = None, description: str = ""):
    """Log the Keras ``model`` (a classifier: stamps -> probabilities) to the active run
    with a signature inferred on ``example`` (a small batch of stamps), register it and
    tag and describe the version. Returns the registered ``ModelVersion``."""
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
    return _tagged_version(registered_model_name, info.registered_model_version, tags,
                           description)


def register_explainer(explainer_path: str | Path, name: str, registered_model_name: str,
                       example, *, tags: Mapping | None = None, description: str = ""):
    """Log the Keras explainer saved at ``explainer_path`` (stamps -> maps) to the active
    run as the ``pyfunc.OcclusionEstimator`` pyfunc, with this package's code and a
    signature taken from the explainer's own input and output shapes; register it and tag
    and describe the version. Returns the registered ``ModelVersion``."""
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
    return _tagged_version(registered_model_name, info.registered_model_version, tags,
                           description)


def _tagged_version(registered_model_name: str, version: str | int,
                    tags: Mapping | None = None, description: str = ""):
    """The registered ``ModelVersion``, after setting ``tags`` on it (floats rounded to
    what a reader needs) and its ``description``."""
    import mlflow

    client = mlflow.MlflowClient()
    # first of all: the version is not to be used until its stage says it is complete
    client.set_model_version_tag(registered_model_name, str(version), COMPLETE_TAG, "false")
    for key, value in (tags or {}).items():
        client.set_model_version_tag(registered_model_name, str(version), key,
                                     rounded(value))
    if description:
        client.update_model_version(registered_model_name, str(version), description)
    return client.get_model_version(registered_model_name, str(version))

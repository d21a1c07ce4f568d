"""The occlusion estimator as a self-contained MLflow pyfunc model.

Input: stamps (N, 21, 21, 4) float32 in [0, 1], all four channels. Output: raw maps
(N, 21, 21) float32 in [-1, 1]. The logged model holds the Keras explainer (classifier pass
for the conditioning + estimator) and this package's code, so a served model needs
nothing else: ``mlflow models serve -m models:/occlusion-estimator@champion``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

STAMP_SHAPE = (21, 21, 4)
ARTIFACT_KEY = "explainer"


def check_stamps(stamps, source: str = "input") -> np.ndarray:
    """``stamps`` as a float32 (N, 21, 21, 4) array; ``ValueError`` naming ``source`` and
    the problem when it has another shape, is not numeric, or holds NaN/inf."""
    try:
        array = np.asarray(stamps)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: stamps are not a regular numeric array ({err})") from None
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{source}: stamps must be numeric, got dtype {array.dtype}")
    if array.ndim != 4 or array.shape[1:] != STAMP_SHAPE:
        raise ValueError(f"{source}: stamps must have shape (N, 21, 21, 4), got {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))[0])
        raise ValueError(f"{source}: stamps hold NaN or infinite values (first in stamp {bad})")
    return array


class OcclusionEstimator(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of the Keras explainer saved at the artifact ``explainer``."""

    def load_context(self, context):
        import keras

        import pipeline.core.models  # noqa: F401  (registers the custom layers)

        self.model = keras.saving.load_model(Path(context.artifacts[ARTIFACT_KEY]),
                                             compile=False)
        self.explain = compile_explainer(self.model)

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        try:
            stamps = check_stamps(model_input, source="request")
        except ValueError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        return predict_maps(self.explain, stamps)


def compile_explainer(model):
    """The Keras explainer as a function traced once for any batch size: stamps
    (B, 21, 21, 4) float32 -> maps (B, 21, 21) float32. One stamp takes ~2 ms this way,
    where ``model.predict`` pays ~95 ms of per-call overhead (this CPU)."""
    import tensorflow as tf

    return tf.function(lambda stamps: model(stamps, training=False),
                       input_signature=[tf.TensorSpec([None, *STAMP_SHAPE], tf.float32)])


def predict_maps(explain, stamps: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(N, 21, 21) float32 maps of ``stamps`` (N, 21, 21, 4) float32 under ``explain``
    (``compile_explainer``'s function), ``batch_size`` stamps per call."""
    parts = [np.asarray(explain(stamps[start:start + batch_size]), np.float32)
             for start in range(0, len(stamps), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 21, 21), np.float32)


def signature():
    """Tensor signature: (-1, 21, 21, 4) float32 in, (-1, 21, 21) float32 out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *STAMP_SHAPE))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 21, 21))]))


def log_estimator(explainer_path: str | Path, name: str, registered_model_name: str, example,
                  *, tags: dict | None = None):
    """Log the explainer at ``explainer_path`` as a pyfunc to the active run, with this
    package's code, and register it; returns the registered ``ModelVersion``."""
    import mlflow

    from pipeline.core.tracking import pinned_requirements, tagged_version

    package = Path(__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name=name, python_model=OcclusionEstimator(),
        artifacts={ARTIFACT_KEY: str(explainer_path)}, code_paths=[str(package)],
        signature=signature(), input_example=np.asarray(example, np.float32),
        registered_model_name=registered_model_name,
        pip_requirements=pinned_requirements("tensorflow-cpu", "keras", "numpy", "mlflow"),
    )
    return tagged_version(registered_model_name, info.registered_model_version, tags)

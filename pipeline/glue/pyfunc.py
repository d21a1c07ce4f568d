"""The occlusion estimator as a self-contained MLflow pyfunc model.

Input: stamps (N, H, W, C) float32 in [0, 1] (others refused unless the request's
parameter ``allow_out_of_range`` is true), all the channels of the data the model was
trained on (21x21x4 for HiTS). Output: raw maps (N, H, W) float32 in [-1, 1]. The
geometry is the explainer's own input shape. The logged model holds the Keras explainer
(classifier pass for the conditioning + estimator) and this package's code, so a served
model needs nothing else: ``mlflow models serve -m models:/occlusion-estimator@champion``.
Registered through ``pipeline.glue.registry.register_explainer``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

ARTIFACT_KEY = "explainer"
# The request parameter that lets stamps outside [0, 1] through (REST: "params" beside
# "inputs"); by default they are refused, as their maps would be meaningless.
ALLOW_OUT_OF_RANGE = "allow_out_of_range"


class OcclusionEstimator(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of the Keras explainer saved at the artifact ``explainer``."""

    def load_context(self, context):
        import keras

        import pipeline.core.models  # noqa: F401  (registers the custom layers)
        from pipeline.core.explain import compile_explainer, model_geometry

        self.model = keras.saving.load_model(Path(context.artifacts[ARTIFACT_KEY]),
                                             compile=False)
        self.shape = model_geometry(self.model).shape
        self.explain = compile_explainer(self.model)

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        from pipeline.core.explain import check_stamps, predict_maps

        allow = bool((params or {}).get(ALLOW_OUT_OF_RANGE, False))
        try:
            stamps = check_stamps(model_input, self.shape, source="request",
                                  allow_out_of_range=allow)
        except ValueError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        return predict_maps(self.explain, stamps)


def signature(explainer):
    """Tensor signature of a Keras explainer: (-1, H, W, C) float32 in, (-1, H, W) out;
    one parameter, ``allow_out_of_range`` (default false: stamps outside [0, 1] are
    refused)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from mlflow.types.schema import ParamSchema, ParamSpec

    from pipeline.core.explain import model_geometry

    geometry = model_geometry(explainer)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *geometry.shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *geometry.map_shape))]),
        params=ParamSchema([ParamSpec(ALLOW_OUT_OF_RANGE, "boolean", False)]))

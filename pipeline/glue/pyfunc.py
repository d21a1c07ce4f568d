"""The occlusion estimator as a self-contained MLflow pyfunc model.

Input: stamps (N, H, W, C) float32 in [0, 1] (others refused unless the request's
parameter ``allow_out_of_range`` is true), all the channels of the data the model was
trained on (21x21x4 for HiTS). Output, one entry per stamp in each: ``maps`` (N, H, W)
float32 in [-1, 1] (raw maps of the explained class), ``target`` (N,) int32 (the explained,
i.e. predicted, class: 0 bogus, 1 real), ``base_prob`` (N,) float32 (its probability) and,
where the version has a doubt head, ``doubt`` (N,) float32 in [0, 2] (how wrong the map may
be, ~1 - r against the exact map; recompute the highest exactly). The geometry is the
explainer's own input shape. The logged model holds the Keras explainer
(classifier pass for the conditioning + estimator) and this package's code, so a served
model needs nothing else: ``mlflow models serve -m models:/occlusion-estimator@champion``.
Registered through ``pipeline.glue.registry.register_explainer`` as "models from code"
(``pipeline/glue/pyfunc_model.py``): no pickle in the store.

``load_registered_explainer`` is how the project's own commands load a registered version:
only its .keras file is read (Keras safe mode, this installation's code), so nothing the
store holds is run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np

ARTIFACT_KEY = "explainer"
# The request parameter that lets stamps outside [0, 1] through (REST: "params" beside
# "inputs"); by default they are refused, as their maps would be meaningless.
ALLOW_OUT_OF_RANGE = "allow_out_of_range"


class OcclusionEstimator(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of the Keras explainer saved at the artifact ``explainer``."""

    # The model's signature is given explicitly (``signature``): no type-hint validation.
    # Without this, MLflow warns at this class statement, on every command, that
    # `predict` has no type hints (in a block of its own that no warnings filter reaches).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.load(context.artifacts[ARTIFACT_KEY])

    def load(self, path: str | Path) -> OcclusionEstimator:
        """Read the Keras explainer at ``path`` (safe mode: no code from the file)."""
        import keras

        import pipeline.core.models  # noqa: F401  (registers the custom layers)
        from pipeline.core.explain import compile_explainer, model_geometry

        self.model = keras.saving.load_model(Path(path), compile=False, safe_mode=True)
        self.shape = model_geometry(self.model).shape
        self.explain = compile_explainer(self.model)
        return self

    def explained(self, stamps, allow_out_of_range: bool = False,
                  source: str = "request") -> dict[str, np.ndarray]:
        """{"maps": (N, H, W) float32, "target": (N,) int32, "base_prob": (N,) float32
        [, "doubt": (N,) float32]} of ``stamps`` (N, H, W, C) (the module's Output);
        ``ValueError`` naming ``source`` for stamps of another shape, NaN or (unless
        allowed) outside [0, 1]."""
        from pipeline.core.explain import check_stamps, predict_explained

        checked = check_stamps(stamps, self.shape, source=source,
                               allow_out_of_range=allow_out_of_range)
        return predict_explained(self.explain, checked)

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        allow = bool((params or {}).get(ALLOW_OUT_OF_RANGE, False))
        try:
            return self.explained(model_input, allow)
        except ValueError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None


def load_registered_explainer(name: str, model: str, client=None):
    """(estimator, version) for version or alias ``model`` of the registered estimator
    ``name``: an ``OcclusionEstimator`` loaded from the version's Keras file alone, and
    its ``ModelVersion``. ``ValueError`` when the version is incomplete or holds no
    explainer; MLflow's own errors when it does not exist."""
    import tempfile

    import mlflow
    import yaml

    from pipeline.glue.completion import complete_version

    version = complete_version(client or mlflow.MlflowClient(), name, model)
    uri = f"models:/{name}/{version.version}"
    # the MLmodel file, then the explainer's file: not the code copy beside them
    with tempfile.TemporaryDirectory(prefix="occmap-model-") as folder, \
            _quiet_downloads():
        try:
            mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/MLmodel",
                                                          dst_path=folder)
            flavour = yaml.safe_load(Path(mlmodel).read_text())["flavors"]["python_function"]
            relative = flavour["artifacts"][ARTIFACT_KEY]["path"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            raise ValueError(f"{uri}: not an occlusion estimator (its MLmodel names no "
                             f"'{ARTIFACT_KEY}' artifact)") from None
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{relative}",
                                                    dst_path=folder)
        return OcclusionEstimator().load(local), version


@contextlib.contextmanager
def _quiet_downloads():
    """MLflow's per-file download bar off (it floods a terminal), restored after."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def signature(explainer):
    """Tensor signature of a Keras explainer: (-1, H, W, C) float32 in; out, named as the
    explainer's outputs: ``maps`` (-1, H, W) float32, ``target`` (-1,) int32,
    ``base_prob`` and ``doubt`` (-1,) float32; one parameter, ``allow_out_of_range``
    (default false: stamps outside [0, 1] are refused)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from mlflow.types.schema import ParamSchema, ParamSpec

    from pipeline.core.explain import model_geometry

    geometry = model_geometry(explainer)
    outputs = explainer.output if isinstance(explainer.output, dict) else {
        "maps": explainer.output}
    specs = [TensorSpec(np.dtype(np.int32 if name == "target" else np.float32),
                        (-1, *geometry.map_shape) if name == "maps" else (-1,), name)
             for name in sorted(outputs)]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *geometry.shape))]),
        outputs=Schema(specs),
        params=ParamSchema([ParamSpec(ALLOW_OUT_OF_RANGE, "boolean", False)]))

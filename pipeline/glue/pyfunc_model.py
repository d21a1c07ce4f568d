"""The estimator's pyfunc as MLflow "models from code": this file is what the store holds
in place of a pickled ``OcclusionEstimator`` (``registry.register_explainer`` logs it), and
MLflow runs it when a generic loader (``mlflow.pyfunc.load_model``, ``mlflow models
serve``) loads the model. The project's own loaders (``occmap``, ``occmap serve``) do not
run it: they read the explainer's .keras file with the installed code
(``pyfunc.load_registered_explainer``)."""

from mlflow.models import set_model

from pipeline.glue.pyfunc import OcclusionEstimator

set_model(OcclusionEstimator())

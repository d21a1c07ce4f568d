"""Model builders. Importing this package registers the custom layers and the loss that
saved models need (``keras.saving.load_model`` finds them by their registered names)."""

from pipeline.core.models import estimators as estimators  # noqa: F401  (registers the loss)
from pipeline.core.models import imported as imported  # noqa: F401  (registers import layers)
from pipeline.core.models import layers as layers  # noqa: F401  (registers custom layers)

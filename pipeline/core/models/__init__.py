"""Model builders. Importing this package registers the custom layers that saved models
need (``keras.saving.load_model`` finds them by their registered names)."""

from pipeline.core.models import layers as layers  # noqa: F401  (registers custom layers)

"""The DVC stages: one module each, its ``main()`` plus the glue that reads params and
writes outputs. No stage imports another; what they share lives in ``pipeline.core`` (the
library) and ``pipeline.glue`` (files and MLflow).
"""

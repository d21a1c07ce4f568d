"""Glue the entry points share: params.yaml and files on disk, MLflow runs and the registry.

The library (``pipeline.core``) never touches files or MLflow; the stages, ``occmap``,
``bench`` and ``report`` do, through these modules.
"""

"""The library: pure functions and models on arrays; it knows nothing of DVC, MLflow or
files (the stages and ``pipeline.glue`` do).
"""

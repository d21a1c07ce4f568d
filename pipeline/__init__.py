"""Occlusion maps for a real/bogus classifier of supernova candidate stamps, and a one-pass
estimator that makes them cheap. Library: ``pipeline.core``; shared glue:
``pipeline.glue``; DVC stages: ``pipeline.stages``; commands: ``pipeline.cli`` (occmap),
``pipeline.bench``, ``pipeline.report``.
"""

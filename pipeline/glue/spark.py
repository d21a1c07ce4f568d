"""Explaining stamps on Apache Spark (``occmap explain --engine spark``).

The stamps become a DataFrame (``index`` long, ``stamp`` array<float>: each (H, W, C)
stamp flattened in C order), split into partitions; ``mapInPandas`` runs one function per
partition that loads the model once per Python worker and computes, with the very code of
one process, either the estimator's outputs (``OcclusionEstimator.explained``) or the
exact engine's maps (``engine_for(...).maps``) under the given occlusion settings. The
rows come back sorted by ``index``, so the arrays equal those of one process.

Why our own pandas UDF rather than ``mlflow.pyfunc.spark_udf``: one pass must give four
outputs per stamp (maps, target, base_prob, doubt), a struct that ``spark_udf`` does not
build from a dict of arrays; the exact engine is no registered pyfunc at all; and occmap
loads a registered estimator from its Keras file alone, never from the code copy in the
store (``spark_udf`` would run that copy in every executor). The model is shipped to the
executors as one Keras file (``SparkContext.addFile``), so executors need the project's
package installed but no access to the MLflow store.

Spark runs on the OS's Java (17); the session binds the driver to 127.0.0.1 and has no
UI. ``master`` is any Spark master URL: ``local[*]`` (default), ``local[2]``,
``spark://HOST:PORT``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DEFAULT_MASTER = "local[*]"
# rows per Arrow batch handed to a partition's function: the explainer's batch
ARROW_BATCH = 1024
SCHEMA = "index long, maps array<array<float>>, target int, base_prob float, doubt float"


# The driver JVM's log configuration unless verbose: nothing, so stderr holds occmap's own
# lines (Spark's default profile prints its banner and WARN lines at start, and a failed
# task's stack trace three times at ERROR; the failure reaches Python as an exception whose
# executor line occmap prints). The repl logger is set to keep Spark from announcing a
# "default log level".
QUIET_LOG4J2 = """\
rootLogger.level = off
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.repl.name = org.apache.spark.repl.Main
logger.repl.level = off
"""


def spark_session(master: str = DEFAULT_MASTER, app: str = "occmap", quiet: bool = True):
    """A SparkSession on ``master`` whose Python workers run this interpreter (the
    project's venv), bound to 127.0.0.1, without the web UI; ``quiet``: the JVM logs
    nothing from its start (failures still raise; else Spark's default WARN level and
    banner). An active session is reused as it is."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    import warnings

    # PySpark 4.3 warns that pandas 3 is not fully supported; the Arrow paths used here
    # (a DataFrame of arrays in, mapInPandas, toPandas) are checked by the tests
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if quiet:
        # read when the driver JVM starts (PySpark passes it to spark-submit): written
        # once per user, the same text every time, so a concurrent writer is harmless
        config = Path(tempfile.gettempdir()) / f"occmap-log4j2-{os.getuid()}.properties"
        if not config.is_file() or config.read_text() != QUIET_LOG4J2:
            config.write_text(QUIET_LOG4J2)
        builder = builder.config("spark.driver.extraJavaOptions",
                                 f"-Dlog4j2.configurationFile=file:{config}")
    spark = (builder.master(master).appName(app)
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")  # no bars over occmap's lines
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH))
             .config("spark.python.worker.reuse", "true")
             .getOrCreate())
    # quiet: nothing (a failure still raises, carrying the executor's line); else errors
    spark.sparkContext.setLogLevel("OFF" if quiet else "ERROR")
    return spark


def explain_on_spark(images: np.ndarray, model, kind: str, master: str = DEFAULT_MASTER,
                     settings: dict | None = None, allow_out_of_range: bool = False,
                     partitions: int | None = None,
                     targets: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Outputs for ``images`` (N, H, W, C) float32 computed by a Spark job on ``master``:
    with ``kind`` "estimate", ``model`` is the Keras explainer (``OcclusionEstimator.model``)
    and the result is {"maps" (N, H, W), "target" (N,), "base_prob" (N,), "doubt" (N,)
    when it has one}; with "exact", ``model`` is the Keras classifier, ``settings`` the
    ``occlusion`` params as a dict, and the result {"maps", "target", "base_prob"};
    ``targets`` (N,) int, exact only: the class to explain per stamp (``occlusion.target:
    label``) instead of the predicted one. The job fails (``RuntimeError`` carrying the
    executor's error) rather than return part."""
    if kind not in ("estimate", "exact"):
        raise ValueError(f"kind must be 'estimate' or 'exact', not {kind!r}")
    import pandas as pd

    spark = spark_session(master)
    n, shape = len(images), tuple(images.shape[1:])
    with tempfile.TemporaryDirectory(prefix="occmap-spark-") as folder:
        # a name of its own per job: a SparkContext refuses a name shipped twice, and the
        # executors cache loaded models by name
        shipped = Path(folder) / f"occmap-{kind}-{uuid.uuid4().hex}.keras"
        model.save(shipped)
        spark.sparkContext.addFile(str(shipped))
        columns = {"index": np.arange(n, dtype=np.int64),
                   "stamp": list(np.ascontiguousarray(images, np.float32).reshape(n, -1))}
        if targets is not None:
            columns["explain"] = np.asarray(targets, np.int32)
        frame = spark.createDataFrame(pd.DataFrame(columns))
        parts = partitions or max(1, spark.sparkContext.defaultParallelism)
        job = _partition_job(shipped.name, shape, kind, settings or {}, allow_out_of_range)
        try:
            rows = frame.repartition(parts).mapInPandas(job, schema=SCHEMA).toPandas()
        except Exception as error:  # Py4J / PythonException: the executor's message inside
            raise RuntimeError(f"the Spark job failed: {executor_error_line(error)}") from error
    rows = rows.sort_values("index")
    if len(rows) != n or not np.array_equal(rows["index"].to_numpy(), np.arange(n)):
        raise RuntimeError(f"the Spark job returned {len(rows)} rows for {n} stamps")
    result = {"maps": np.stack([np.stack(m) for m in rows["maps"]]).astype(np.float32),
              "target": rows["target"].to_numpy(np.int32),
              "base_prob": rows["base_prob"].to_numpy(np.float32)}
    if kind == "estimate" and rows["doubt"].notna().all():
        result["doubt"] = rows["doubt"].to_numpy(np.float32)
    return result


def _partition_job(file_name: str, shape: tuple, kind: str, settings: dict,
                   allow_out_of_range: bool):
    """The function ``mapInPandas`` runs on each partition (pickled to the executors)."""

    def job(batches: Iterator) -> Iterator:
        from pipeline.glue.spark import explain_batch

        for batch in batches:
            yield explain_batch(batch, file_name, shape, kind, settings, allow_out_of_range)

    return job


_LOADED: dict = {}  # per Python worker: the shipped model, loaded once


def explain_batch(batch, file_name: str, shape: tuple, kind: str, settings: dict,
                  allow_out_of_range: bool):
    """Executor side: one Arrow batch (``index``, ``stamp``) to rows of SCHEMA."""
    import pandas as pd
    from pyspark import SparkFiles

    stamps = np.stack(batch["stamp"].to_numpy()).astype(np.float32).reshape(-1, *shape)
    computed = cached_model(SparkFiles.get(file_name), kind, settings)
    if kind == "estimate":
        outputs = computed.explained(stamps, allow_out_of_range, source="a Spark partition")
    else:
        engine, chunk_size = computed
        chosen = batch["explain"].to_numpy(np.int32) if "explain" in batch else None
        maps, target, base_prob = engine.maps(stamps, chunk_size=chunk_size, target=chosen)
        outputs = {"maps": maps, "target": target, "base_prob": base_prob}
    doubt = outputs.get("doubt")
    return pd.DataFrame({
        "index": batch["index"].to_numpy(np.int64),
        "maps": [list(m) for m in np.asarray(outputs["maps"], np.float32)],
        "target": np.asarray(outputs["target"], np.int32),
        "base_prob": np.asarray(outputs["base_prob"], np.float32),
        "doubt": (np.asarray(doubt, np.float32) if doubt is not None
                  else np.full(len(stamps), np.nan, np.float32))})


def cached_model(path: str, kind: str, settings: dict):
    """Executor side: the model shipped at ``path``, loaded once per Python worker (and
    kept for the worker's next tasks): for ``kind`` "estimate" an ``OcclusionEstimator``,
    for "exact" (the exact engine of the classifier under ``settings``, its chunk size)."""
    key = (path, kind)
    if key not in _LOADED:
        # each job ships its model under a new name: keep only the newest of each kind, so a
        # long-lived worker does not hold every model it ever ran
        for stale in [k for k in _LOADED if k[1] == kind]:
            del _LOADED[stale]
        _LOADED[key] = _load(path, kind, settings)
    return _LOADED[key]


def _load(path: str, kind: str, settings: dict):
    import tensorflow as tf

    # each Python worker is one of the executor's cores: one thread each, no oversubscribing
    # (refused once TensorFlow has run in this worker: then it already has its threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    if kind == "estimate":
        from pipeline.glue.pyfunc import OcclusionEstimator

        return OcclusionEstimator().load(path)
    import keras

    import pipeline.core.models  # noqa: F401  (registers the custom layers)
    from pipeline.core.explain import engine_for
    from pipeline.core.params import OcclusionParams

    occlusion = OcclusionParams.from_dict(settings)
    classifier = keras.saving.load_model(path, compile=False, safe_mode=True)
    return engine_for(classifier, occlusion), occlusion.chunk_size


def executor_error_line(error: Exception) -> str:
    """The executor's own error line out of Spark's long message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line and not line.startswith("at "):
            return line
    return lines[-1] if lines else type(error).__name__

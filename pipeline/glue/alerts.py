"""A Fink-style science module: occlusion maps for a broker's alert stream on Apache Spark.

Fink, the broker of the ZTF and Rubin streams, runs each science module as a pandas UDF
over a DataFrame of alerts read from Parquet: ``df.withColumn(name, module(*columns))``.
This module is such a module for the registered occlusion estimator, plus the two jobs a
broker runs it in: a batch job (Parquet alerts in, explained alerts out) and a Structured
Streaming job over a directory that alert files arrive in (Fink's raw -> science step),
with a checkpoint, so a killed job restarts where it stopped and explains every alert
exactly once.

The alert format (``alert_schema``): ``candid`` long (the candidate's id) and one column
per stamp channel, named as the model's channels (HiTS: ``template``, ``science``,
``difference``, ``snr_difference``), each an array<float> of H*W pixel values in row-major
order (a 21x21 cutout is 441 values), in [0, 1]; any other column is carried through.
The module adds one column (``EXPLANATION``), a struct of:

- ``map`` array<array<float>>: the (H, W) occlusion map of the explained class (drop of
  its probability when the patch around each pixel is hidden; positive = evidence for it);
- ``explained_class`` int: the predicted class (0 bogus, 1 real), the one explained;
- ``probability`` float: its probability under the classifier;
- ``doubt`` float: how wrong the map may be (~1 - r against the exact map, [0, 2]); null
  for an estimator version without a doubt head.

The model is the estimator's Keras file, shipped to the executors once
(``ship_model``: ``SparkContext.addFile``) and loaded once per Python worker; the maps
are those of ``occmap explain`` in one process (the same code: ``OcclusionEstimator``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Tuple  # noqa: UP035  (PySpark reads the UDF's hints: typing's form)
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd  # the UDF's type hints name it: PySpark resolves them in this module

ALERT_ID = "candid"
EXPLANATION = "occlusion"
MODEL_COLUMN = "occlusion_model"  # the estimator version that explained the alert
EXPLANATION_TYPE = ("struct<map: array<array<float>>, explained_class: int, "
                    "probability: float, doubt: float>")


# Columns twin alerts carry besides the stamps: the truth a broker's alerts lack (null there)
TWIN_SCHEMA = "label int, kind string"


def twin_columns(labels: np.ndarray | None, kinds: np.ndarray | None) -> dict[str, np.ndarray]:
    """The ``TWIN_SCHEMA`` columns of twin stamps: "label" (N,) int32 (1 real, 0 bogus),
    "kind" (N,) str (the twin's kind of stamp); those given."""
    columns = {}
    if labels is not None:
        columns["label"] = np.asarray(labels, np.int32)
    if kinds is not None:
        columns["kind"] = np.asarray(kinds).astype(str)
    return columns


def alert_schema(channels: tuple[str, ...], extra: str = "") -> str:
    """The Spark DDL schema of alerts with stamp ``channels``: ``candid`` long, one
    array<float> column per channel[, ``extra`` columns in DDL, e.g. "kind string"]."""
    columns = [f"{ALERT_ID} long"] + [f"`{name}` array<float>" for name in channels]
    return ", ".join(columns + ([extra] if extra else []))


def alerts_table(images: np.ndarray, candids: np.ndarray, channels: tuple[str, ...],
                 extra: dict[str, np.ndarray] | None = None):
    """A pyarrow Table of alerts: ``images`` (N, H, W, C) float32 cut into one column per
    channel of H*W values (row-major), ``candids`` (N,) int64, plus ``extra`` columns."""
    import pyarrow as pa

    n, height, width, depth = images.shape
    if depth != len(channels):
        raise ValueError(f"stamps have {depth} channels, {len(channels)} names given")
    columns = {ALERT_ID: pa.array(np.asarray(candids, np.int64))}
    for index, name in enumerate(channels):
        pixels = np.ascontiguousarray(images[..., index], np.float32).reshape(-1)
        columns[name] = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * height * width + 1, height * width, dtype=np.int32)),
            pa.array(pixels))
    for name, values in (extra or {}).items():
        values = np.asarray(values)  # its dtype kept: int32 stays int, as the schema says
        columns[name] = pa.array(values if values.dtype.kind != "U" else values.tolist())
    return pa.table(columns)


def write_alert_files(folder: Path, images: np.ndarray, candids: np.ndarray,
                      channels: tuple[str, ...], files: int = 1, prefix: str = "alerts",
                      extra: dict[str, np.ndarray] | None = None) -> list[Path]:
    """The alerts cut into ``files`` Parquet files ``folder/<prefix>-NNN.parquet`` (in
    order, about equal sizes). Each file is written under a hidden name (Spark's file
    source skips names starting with ".") and renamed whole, so a streaming job watching
    ``folder`` never reads half a file. ``FileExistsError`` before writing anything when a
    file of that name is there (a stream that read it would not read it again)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in (folder / f"{prefix}-{n:03d}.parquet" for n in range(files))
             if p.exists()]
    if taken:
        raise FileExistsError(f"{folder}: {', '.join(taken)} already there (a stream that "
                              f"read them would not read them again): choose another prefix")
    written = []
    for number, rows in enumerate(np.array_split(np.arange(len(images)), files)):
        table = alerts_table(images[rows], candids[rows], channels,
                             {name: values[rows] for name, values in (extra or {}).items()})
        path = folder / f"{prefix}-{number:03d}.parquet"
        temp = folder / f".{path.name}.tmp"
        try:
            pq.write_table(table, temp)
            temp.rename(path)
        finally:
            temp.unlink(missing_ok=True)
        written.append(path)
    return written


def ship_model(spark, keras_model, folder: str | Path) -> str:
    """Save ``keras_model`` (the estimator's explainer) to a file of its own in ``folder``
    and ship it to every executor (``SparkContext.addFile``); returns the name the UDF
    loads it by. The file must stay until the job ends (executors fetch it from there)."""
    folder = Path(folder)
    # a name per job: a SparkContext refuses a name shipped twice, and workers cache by it
    shipped = folder / f"occmap-estimate-{uuid.uuid4().hex}.keras"
    keras_model.save(shipped)
    spark.sparkContext.addFile(str(shipped))
    return shipped.name


def explanation_udf(model_name: str, shape: tuple[int, int, int],
                    allow_out_of_range: bool = False):
    """The science module: a pandas UDF (iterator of batches) of (candid, *channel columns)
    returning the ``EXPLANATION`` struct per alert. ``model_name`` is what ``ship_model``
    returned; ``shape`` the model's stamp (H, W, C). A stamp of another size, with NaN or
    (unless ``allow_out_of_range``) outside [0, 1] fails the task with a ``ValueError``
    naming its candid."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(EXPLANATION_TYPE)
    def explain(batches: Iterator[Tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:  # noqa: UP006
        from pipeline.glue.alerts import explain_alert_batch

        for candids, *channels in batches:
            yield explain_alert_batch(candids, channels, model_name, shape,
                                      allow_out_of_range)

    return explain


def add_explanations(alerts, model_name: str, shape: tuple[int, int, int],
                     channels: tuple[str, ...], allow_out_of_range: bool = False,
                     model_uri: str | None = None):
    """``alerts`` (a DataFrame of ``alert_schema``, batch or streaming) with the
    ``EXPLANATION`` column added (and, given ``model_uri``, ``MODEL_COLUMN`` naming the
    estimator version): how a Spark broker plugs the module in."""
    from pyspark.sql.functions import lit

    module = explanation_udf(model_name, shape, allow_out_of_range)
    explained = alerts.withColumn(EXPLANATION, module(alerts[ALERT_ID],
                                                      *(alerts[f"`{c}`"] for c in channels)))
    return explained if model_uri is None else explained.withColumn(MODEL_COLUMN,
                                                                    lit(model_uri))


def explain_alert_batch(candids, channels: list, model_name: str,
                        shape: tuple[int, int, int], allow_out_of_range: bool):
    """Executor side: one Arrow batch of alerts (candid Series, one Series of H*W arrays
    per channel) to a DataFrame of the struct's fields."""
    from pyspark import SparkFiles

    from pipeline.glue.spark import cached_model

    height, width, depth = shape
    ids = candids.to_numpy(np.int64)
    stamps = np.empty((len(ids), height, width, depth), np.float32)
    for index, column in enumerate(channels):
        for row, pixels in enumerate(column.to_numpy()):
            if pixels is None or len(pixels) != height * width:
                size = "no stamp" if pixels is None else f"{len(pixels)} pixels"
                raise ValueError(f"alert candid {ids[row]}: channel {index} has {size}, "
                                 f"the model explains {height}x{width} = {height * width}")
            stamps[row, :, :, index] = np.asarray(pixels, np.float32).reshape(height, width)
    estimator = cached_model(SparkFiles.get(model_name), "estimate", {})
    try:
        outputs = estimator.explained(stamps, allow_out_of_range, source="alerts")
    except ValueError:
        for row, candid in enumerate(ids):  # the first refused alert, by its id
            estimator.explained(stamps[row:row + 1], allow_out_of_range,
                                source=f"alert candid {candid}")
        raise
    doubt = outputs.get("doubt")
    return pd.DataFrame({
        "map": [list(m) for m in np.asarray(outputs["maps"], np.float32)],
        "explained_class": np.asarray(outputs["target"], np.int32),
        "probability": np.asarray(outputs["base_prob"], np.float32),
        "doubt": (np.asarray(doubt, np.float32) if doubt is not None
                  else np.full(len(ids), np.nan, np.float32))})


def explain_alerts(spark, source: str, out: str, model_name: str,
                   shape: tuple[int, int, int], channels: tuple[str, ...],
                   allow_out_of_range: bool = False, model_uri: str | None = None) -> int:
    """Batch job: the Parquet alerts at ``source`` (a file or a folder of them), explained,
    written to the folder ``out`` as Parquet (Spark's output folder, written under a
    temporary name and renamed at the end, so a failed job leaves no ``out``). Returns
    the number of alerts."""
    import shutil

    alerts = spark.read.parquet(source)
    explained = add_explanations(alerts, model_name, shape, channels, allow_out_of_range,
                                 model_uri)
    target = Path(out)
    temp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        explained.write.parquet(str(temp))
        count = spark.read.parquet(str(temp)).count()
        temp.rename(target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return count


def stream_alerts(spark, source: str, out: str, checkpoint: str, model_name: str,
                  shape: tuple[int, int, int], channels: tuple[str, ...],
                  extra_schema: str = "", files_per_batch: int = 1,
                  available_now: bool = False, poll_seconds: float = 2.0,
                  allow_out_of_range: bool = False, model_uri: str | None = None):
    """Structured Streaming job: the alert files arriving in the folder ``source``
    (Parquet, ``alert_schema`` (+ ``extra_schema``)), ``files_per_batch`` per micro-batch,
    explained and appended to the Parquet folder ``out``, with its progress in
    ``checkpoint``. Spark's file sink commits each micro-batch in ``out/_spark_metadata``
    and the checkpoint records which files were read, so a job killed at any point and
    restarted with the same ``checkpoint`` explains every alert exactly once (read ``out``
    through Spark or ``committed_files``: the metadata log is what says which files
    belong to it). ``available_now``: process what is there and stop; else poll every
    ``poll_seconds`` until stopped. Returns the started ``StreamingQuery``."""
    alerts = (spark.readStream.schema(alert_schema(channels, extra_schema))
              .option("maxFilesPerTrigger", files_per_batch).parquet(source))
    explained = add_explanations(alerts, model_name, shape, channels, allow_out_of_range,
                                 model_uri)
    writer = (explained.writeStream.format("parquet").outputMode("append")
              .option("path", out).option("checkpointLocation", checkpoint)
              .queryName("occmap_alerts"))
    writer = (writer.trigger(availableNow=True) if available_now
              else writer.trigger(processingTime=f"{poll_seconds} seconds"))
    return writer.start()


def committed_files(out: str | Path) -> list[Path]:
    """The Parquet files of a streaming job's output folder that belong to committed
    micro-batches, from the file sink's log ``out/_spark_metadata`` (files of a batch cut
    short by a kill lie beside them but are not listed). The log is one file per batch id
    (a "v1" line, then one JSON entry per file: path, action add/delete), compacted every
    few batches into ``<id>.compact`` holding all entries up to it."""
    log = Path(out) / "_spark_metadata"
    if not log.is_dir():
        return []
    batches = {}
    for entry in log.iterdir():
        name = entry.name.removesuffix(".compact")
        if name.isdigit():
            batches[int(name)] = entry
    compacted = [b for b, entry in batches.items() if entry.name.endswith(".compact")]
    start = max(compacted, default=-1)
    files: dict[str, bool] = {}
    for batch in sorted(b for b in batches if b >= start):
        lines = batches[batch].read_text().splitlines()
        for line in lines[1:]:
            if line.strip():
                status = json.loads(line)
                files[status["path"]] = status.get("action", "add") == "add"
    # the log holds URIs (file:///folder/part-....parquet, spaces as %20)
    return [Path(unquote(urlparse(uri).path)) for uri, kept in files.items() if kept]

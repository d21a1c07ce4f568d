"""A Spark standalone cluster on this machine (pipeline/spark_cluster.py, `make
spark-cluster`): a real master and two 1-core workers on 127.0.0.1 run the exact engine's
Spark job (the occlusion_maps stage's path) from this process; a second start starts
nothing; stop leaves no process behind and a second stop is a no-op."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import spark_cluster
from pipeline.glue.processes import start_time

WORKERS = 2


@pytest.fixture(scope="module")
def cluster(spark_ready, tmp_path_factory):
    """One cluster for the module (JVMs take seconds to start on 2 cores); stopped at the
    end whatever the tests did (a no-op after the stop test)."""
    folder = tmp_path_factory.mktemp("spark-cluster")
    try:
        yield spark_cluster.start(folder, workers=WORKERS, worker_cores=1,
                                  worker_memory="1g", timeout_s=90)
    finally:
        spark_cluster.stop(folder)


def _pids(folder: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text()) for path in folder.glob("*.pid")}


def _session_members(leaders: set[int]) -> list[int]:
    """Live processes in the sessions of ``leaders`` (each daemon runs in its own): the
    daemons and any executor a worker started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[3]) in leaders:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_the_exact_engine_runs_on_the_cluster(cluster, tiny_maps, monkeypatch):
    """The Spark path of the occlusion_maps stage (occlusion.spark_master) against the
    standalone cluster: the maps of the engine in this process."""
    import dataclasses

    from pyspark.sql import SparkSession

    from pipeline.core.explain import engine_for
    from pipeline.core.params import OcclusionParams
    from pipeline.glue.artifacts import load_model
    from pipeline.glue.spark import explain_on_spark

    state = spark_cluster.master_state(cluster)
    assert state["url"] == cluster.master_url
    assert state["aliveworkers"] == WORKERS
    assert [worker["cores"] for worker in state["workers"]] == [1] * WORKERS
    assert all(worker["host"] == "127.0.0.1" for worker in state["workers"])

    active = SparkSession.getActiveSession()
    if active is not None:  # another module's local[2] session would be reused
        active.stop()
    # the Python workers run what the driver names (its python3 may not be the venv's)
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    project, _ = tiny_maps
    classifier = load_model(project / "models" / "classifier.keras")
    with np.load(project / "data" / "prepared" / "test.npz") as npz:
        images = npz["images"]
    occlusion = OcclusionParams(chunk_size=7)
    maps, target, base_prob = engine_for(classifier, occlusion).maps(images, chunk_size=7)
    there = explain_on_spark(images, classifier, "exact", cluster.master_url,
                             dataclasses.asdict(occlusion))
    spark = SparkSession.getActiveSession()
    try:
        assert spark.sparkContext.master == cluster.master_url
        used = spark_cluster.master_state(cluster)
        assert used["activeapps"] and used["activeapps"][0]["name"] == "occmap"
    finally:
        spark.stop()
    np.testing.assert_array_equal(there["target"], target)
    np.testing.assert_allclose(there["maps"], maps, atol=1e-6, rtol=0)
    np.testing.assert_allclose(there["base_prob"], base_prob, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_second_start_starts_nothing(cluster, capsys):
    before = _pids(cluster.folder)
    assert set(before) == {"master", *(f"worker-{i}" for i in range(1, WORKERS + 1))}
    spark_cluster.main(["start", "--dir", str(cluster.folder), "--workers", str(WORKERS)])
    assert capsys.readouterr().out == f"SPARK_MASTER={cluster.master_url}\n"
    assert _pids(cluster.folder) == before
    assert spark_cluster.master_state(cluster)["aliveworkers"] == WORKERS


@pytest.mark.slow
def test_stop_leaves_no_process_and_a_second_stop_is_a_no_op(cluster):
    pids = _pids(cluster.folder)
    assert all(start_time(pid) is not None for pid in pids.values())
    stopped = spark_cluster.stop(cluster.folder)
    assert len(stopped) == WORKERS + 1
    assert all(start_time(pid) is None for pid in pids.values())
    assert _session_members(set(pids.values())) == []
    assert not list(cluster.folder.glob("*.pid"))
    assert spark_cluster.master_state(cluster, timeout_s=2) is None
    assert spark_cluster.stop(cluster.folder) == []
    assert spark_cluster.status(cluster.folder)["master"] is None

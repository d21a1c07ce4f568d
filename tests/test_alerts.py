"""`occmap alerts`: the Fink-style science module on a real local Spark (local[2]).

The explained alerts carry the maps of `occmap explain` in one process; a streaming job
killed after its second micro-batch and restarted explains every alert exactly once; a
bad alert fails the job with its candid and leaves nothing that looks written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.glue.alerts import committed_files, twin_columns

N_ALERTS = 12


@pytest.fixture(scope="module")
def twin(tiny_champion, tmp_path_factory):
    """The tiny test split's first stamps (with labels and kinds), and their maps by
    `occmap explain` in one process."""
    project, env = tiny_champion
    folder = tmp_path_factory.mktemp("alerts")
    with np.load(project / "data" / "prepared" / "test.npz") as npz:
        arrays = {name: npz[name][:N_ALERTS] for name in ("images", "labels", "kind")}
    stamps = folder / "stamps.npz"
    np.savez(stamps, **arrays)
    result = _occmap(env, "explain", stamps, "--out", folder / "one.npz")
    assert result.exit_code == 0, result.output
    with np.load(folder / "one.npz") as npz:
        one = {name: npz[name] for name in ("maps", "target", "base_prob", "doubt")}
    return stamps, arrays, one, env


def _occmap(env, *args):
    return CliRunner().invoke(main, list(map(str, args)),
                              env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})


def _explained(paths) -> dict[int, dict]:
    """{candid: row} of explained alert files (each candid must appear once)."""
    rows: dict[int, dict] = {}
    for path in paths:
        for row in pq.read_table(path).to_pylist():
            assert row["candid"] not in rows, f"candid {row['candid']} explained twice"
            rows[row["candid"]] = row
    return rows


def _assert_rows_match(rows: dict[int, dict], arrays, one, first_candid: int = 1):
    assert sorted(rows) == list(range(first_candid, first_candid + N_ALERTS))
    for index in range(N_ALERTS):
        row = rows[first_candid + index]
        explanation = row["occlusion"]
        np.testing.assert_allclose(np.array(explanation["map"]), one["maps"][index],
                                   atol=1e-6, rtol=0)
        assert explanation["explained_class"] == one["target"][index]
        assert explanation["probability"] == pytest.approx(one["base_prob"][index], abs=1e-6)
        assert explanation["doubt"] == pytest.approx(one["doubt"][index], abs=1e-6)
        # the alert's own columns are carried through unchanged
        assert row["label"] == arrays["labels"][index]
        assert row["kind"] == arrays["kind"][index]
        np.testing.assert_array_equal(np.array(row["science"], np.float32),
                                      arrays["images"][index, :, :, 1].reshape(-1))
        assert row["occlusion_model"].startswith("models:/occlusion-estimator/")


@pytest.mark.slow
def test_the_science_module_adds_the_maps_of_one_process(spark_ready, twin, tmp_path):
    stamps, arrays, one, env = twin
    written = _occmap(env, "alerts", "write", stamps, "--out", tmp_path / "raw", "--files", 2)
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "alerts-000.parquet", "alerts-001.parquet"]
    again = _occmap(env, "alerts", "write", stamps, "--out", tmp_path / "raw", "--files", 2)
    assert again.exit_code != 0 and "alerts-000.parquet, alerts-001.parquet already there" \
        in again.output
    result = _occmap(env, "alerts", "explain", tmp_path / "raw", "--out", tmp_path / "science",
                     "--master", "local[2]")
    assert result.exit_code == 0, result.output
    assert f"{N_ALERTS} alerts explained" in result.output
    _assert_rows_match(_explained(sorted((tmp_path / "science").glob("*.parquet"))),
                       arrays, one)


@pytest.mark.slow
def test_a_bad_alert_fails_the_job_by_its_candid_and_nothing_is_written(spark_ready, twin,
                                                                         tmp_path):
    from pipeline.core.geometry import HITS_CHANNELS
    from pipeline.glue.alerts import write_alert_files

    stamps, arrays, one, env = twin
    images = arrays["images"].copy()
    images[5, 3, 3, 2] = np.nan
    write_alert_files(tmp_path / "raw", images, np.arange(100, 100 + N_ALERTS), HITS_CHANNELS)
    result = _occmap(env, "alerts", "explain", tmp_path / "raw", "--out", tmp_path / "science",
                     "--master", "local[2]")
    assert result.exit_code != 0
    assert "alert candid 105" in result.output and "NaN" in result.output, result.output
    assert not (tmp_path / "science").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temporary folder left


def _stream(env, raw: Path, out: Path, checkpoint: Path, log: Path, *extra):
    command = [sys.executable, "-m", "pipeline.cli", "alerts", "stream", str(raw),
               "--out", str(out), "--checkpoint", str(checkpoint), "--master", "local[2]",
               "--poll", "0.5", *extra]
    with open(log, "ab") as handle:
        return subprocess.Popen(command, env=os.environ | env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_commit(process, checkpoint: Path, batch: int, log: Path, timeout: float = 240):
    """Until the streaming job has committed micro-batch ``batch`` (its checkpoint's
    commits/<batch>)."""
    deadline = time.monotonic() + timeout
    while not (checkpoint / "commits" / str(batch)).exists():
        if process.poll() is not None:
            pytest.fail(f"the stream exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch} not committed in {timeout} s:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
def test_a_stream_killed_and_restarted_explains_every_alert_exactly_once(spark_ready, twin,
                                                                         tmp_path):
    from pipeline.core.geometry import HITS_CHANNELS
    from pipeline.glue.alerts import write_alert_files

    stamps, arrays, one, env = twin
    raw, out, checkpoint = tmp_path / "raw", tmp_path / "science", tmp_path / "checkpoint"
    log = tmp_path / "stream.log"
    thirds = np.array_split(np.arange(N_ALERTS), 3)
    candids = np.arange(1, N_ALERTS + 1)
    extra = twin_columns(arrays["labels"], arrays["kind"])

    def arrive(number: int):
        rows = thirds[number]
        write_alert_files(raw, arrays["images"][rows], candids[rows], HITS_CHANNELS,
                          prefix=f"night-{number}",
                          extra={name: values[rows] for name, values in extra.items()})

    arrive(0)
    stream = _stream(env, raw, out, checkpoint, log)
    try:
        _wait_for_commit(stream, checkpoint, 0, log)
        arrive(1)
        _wait_for_commit(stream, checkpoint, 1, log)
    finally:  # killed as by a crash: the driver, its JVM and Python workers at once
        os.killpg(stream.pid, signal.SIGKILL)
        stream.wait()
    arrive(2)
    # restarted on the same checkpoint: it picks up the third file only
    restart = _stream(env, raw, out, checkpoint, log, "--available-now")
    assert restart.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not (checkpoint / "commits" / "3").exists()  # three micro-batches in all
    _assert_rows_match(_explained(committed_files(out)), arrays, one)

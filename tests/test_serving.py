"""The champion estimator over REST: `mlflow models serve` (MLflow's generic server) and
`occmap serve` (bounded requests, reasons without echoes), and what loading a registered
model runs. Servers bind 127.0.0.1 on a free port and are stopped by their PID."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import VENV_BIN, free_port, post_json, started_server, stopped_server


@pytest.fixture(scope="module")
def server(tiny_champion):
    """Base URL of `mlflow models serve -m models:/occlusion-estimator@champion` (MLflow's
    generic server: it loads the model from code, with no pickle)."""
    tmp_path, env = tiny_champion
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = started_server([str(VENV_BIN / "mlflow"), "models", "serve", "-m",
                        "models:/occlusion-estimator@champion", "--env-manager", "local",
                        "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                       tmp_path, env, url, tmp_path / f"serve-{port}.log")
    try:
        yield url
    finally:
        stopped_server(process)


# `occmap serve` in the tests: small bounds, so that crossing them is cheap
MAX_STAMPS, MAX_MB = 8, 0.5


@pytest.fixture(scope="module")
def bounded(tiny_champion):
    """Base URL of `occmap serve` on the champion, at most 8 stamps / 0.5 MiB a request."""
    tmp_path, env = tiny_champion
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = started_server([str(VENV_BIN / "occmap"), "serve", "--port", str(port),
                        "--max-stamps", str(MAX_STAMPS), "--max-request-mb", str(MAX_MB)],
                       tmp_path, env, url, tmp_path / f"occmap-serve-{port}.log")
    try:
        yield url
    finally:
        stopped_server(process)


def _in_process(project, stamps) -> dict[str, np.ndarray]:
    """The explainer's outputs for ``stamps``, computed here from the project's file."""
    import keras

    import pipeline.core.models  # noqa: F401

    explainer = keras.saving.load_model(project / "models" / "estimator.keras", compile=False)
    return {name: np.asarray(value)
            for name, value in explainer.predict(stamps, verbose=0).items()}


def _assert_answer_is(answer: dict, expected: dict[str, np.ndarray]) -> None:
    """A 200 answer holds every output of the explainer, per stamp, as computed here."""
    predictions = answer["predictions"]
    assert sorted(predictions) == ["base_prob", "doubt", "maps", "target"]
    assert sorted(expected) == sorted(predictions)
    n = len(expected["maps"])
    assert np.asarray(predictions["maps"]).shape == (n, 21, 21)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(predictions[name], np.float64), value,
                                   atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def stamps_and_maps(tiny_champion):
    """Six test stamps and the explainer's outputs for them, computed in process."""
    tmp_path, _ = tiny_champion
    with np.load(tmp_path / "data" / "prepared" / "test.npz") as npz:
        stamps = npz["images"][:6]
    return stamps, _in_process(tmp_path, stamps)


@pytest.mark.slow
def test_served_champion_answers_with_the_in_process_maps(server, stamps_and_maps):
    stamps, expected = stamps_and_maps
    status, answer = post_json(f"{server}/invocations",
                           json.dumps({"inputs": stamps.tolist()}).encode())
    assert status == 200, answer
    _assert_answer_is(answer, expected)


@pytest.mark.slow
def test_mlflow_server_refuses_bad_stamps_with_a_4xx(server, stamps_and_maps):
    stamps, _ = stamps_and_maps
    for body, expected in (({"inputs": (stamps * 255.0).tolist()}, "outside [0, 1]"),
                           ({"inputs": np.where(np.arange(4) == 1, math.nan, stamps).tolist()},
                            "NaN")):
        status, answer = post_json(f"{server}/invocations", json.dumps(body).encode())
        assert 400 <= status < 500 and expected in answer.get("message", ""), answer


@pytest.mark.slow
def test_occmap_serve_answers_with_the_in_process_maps(bounded, stamps_and_maps):
    stamps, expected = stamps_and_maps
    for key in ("inputs", "instances"):
        status, answer = post_json(f"{bounded}/invocations",
                               json.dumps({key: stamps.tolist()}).encode())
        assert status == 200, answer
        _assert_answer_is(answer, expected)
    with urllib.request.urlopen(f"{bounded}/version", timeout=10) as answer:
        facts = json.loads(answer.read())
    assert facts["model_uri"] == "models:/occlusion-estimator/1"
    assert facts["max_stamps"] == MAX_STAMPS


@pytest.mark.slow
@pytest.mark.parametrize("case, body, expected", [
    ("wrong shape", lambda s: {"inputs": s[:, :20].tolist()}, "shape"),
    ("NaN", lambda s: {"inputs": np.where(np.arange(4) == 1, math.nan, s).tolist()}, "NaN"),
    ("non-numeric", lambda s: {"inputs": [[["faint", "bright"]]]}, "numeric"),
    ("ragged", lambda s: {"inputs": [s[0].tolist(), s[1, :20].tolist()]}, "regular"),
    ("0-255 stamps", lambda s: {"inputs": (s * 255.0).tolist()}, "outside [0, 1]"),
    ("no stamps key", lambda s: {"data": s.tolist()}, "'inputs'"),
    ("unknown param", lambda s: {"inputs": s.tolist(), "params": {"scale": 2}}, "unknown"),
    ("not JSON", lambda s: b"{\"inputs\": [0.5, ", "not valid JSON"),
])
def test_occmap_serve_refuses_malformed_requests_without_echoing_them(bounded, stamps_and_maps,
                                                                      case, body, expected):
    stamps, _ = stamps_and_maps
    payload = body(stamps)
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, answer = post_json(f"{bounded}/invocations", raw)
    assert status == 400, (case, status, answer)
    message = answer["message"]
    assert expected in message, (case, message)
    # the reason only: no stamp value of the request comes back
    assert len(message) < 400 and f"{float(stamps[0, 0, 0, 0]):.6f}"[:7] not in message, message


@pytest.mark.slow
def test_occmap_serve_answers_413_beyond_its_bounds(bounded, stamps_and_maps):
    stamps, _ = stamps_and_maps
    many = np.concatenate([stamps, stamps])[:MAX_STAMPS + 1]
    status, answer = post_json(f"{bounded}/invocations",
                               json.dumps({"inputs": many.tolist()}).encode())
    assert status == 413 and f"at most {MAX_STAMPS}" in answer["message"], answer
    # a body over the byte limit (valid JSON, padded): read and dropped, then 413
    padded = json.dumps({"inputs": stamps[:1].tolist()}) + " " * int(MAX_MB * 2**20)
    status, answer = post_json(f"{bounded}/invocations", padded.encode())
    assert status == 413 and "larger than" in answer["message"], answer
    # a declared 1 GiB body is answered before any of it is sent
    host, port = bounded.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 1073741824"
                           b"\r\n\r\n")
        head = connection.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head
    # and the server still answers normally afterwards
    status, _ = post_json(f"{bounded}/invocations",
                          json.dumps({"inputs": stamps.tolist()}).encode())
    assert status == 200


@pytest.mark.slow
def test_out_of_range_stamps_pass_when_the_request_allows_them(bounded, server, stamps_and_maps,
                                                               tiny_champion):
    stamps, _ = stamps_and_maps
    scaled = stamps * 3.0
    expected = _in_process(tiny_champion[0], scaled)
    for url in (bounded, server):
        body = {"inputs": scaled.tolist(), "params": {"allow_out_of_range": True}}
        status, answer = post_json(f"{url}/invocations", json.dumps(body).encode())
        assert status == 200, answer
        _assert_answer_is(answer, expected)
        refused, _ = post_json(f"{url}/invocations",
                           json.dumps({"inputs": scaled.tolist()}).encode())
        assert 400 <= refused < 500


@pytest.mark.slow
def test_the_store_holds_no_pickle_and_occmap_runs_no_code_from_it(tiny_champion, tmp_path):
    import mlflow

    store, env = tiny_champion
    champion = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "occlusion-estimator", "champion")
    model_id = champion.source.removeprefix("models:/")
    (model_dir,) = {p.parent for p in store.rglob("MLmodel") if model_id in str(p)}
    assert not list(model_dir.rglob("*.pkl")), list(model_dir.rglob("*.pkl"))
    stored_code = model_dir / "pyfunc_model.py"
    original = stored_code.read_text()
    marker = tmp_path / "store-code-ran"
    # someone who can write the store edits the model's code
    stored_code.write_text(f"open({str(marker)!r}, 'w').close()\n" + original)
    try:
        with np.load(store / "data" / "prepared" / "test.npz") as npz:
            np.savez(tmp_path / "stamps.npz", images=npz["images"][:3])
        explained = subprocess.run(
            [str(VENV_BIN / "occmap"), "explain", str(tmp_path / "stamps.npz"), "--out",
             str(tmp_path / "maps.npz")], cwd=store, env=env, capture_output=True, text=True,
            timeout=300)
        assert explained.returncode == 0, explained.stderr
        assert not marker.exists()  # occmap read the Keras file only
        # the generic loader does run the model's code: the edit was a real one
        generic = subprocess.run(
            [sys.executable, "-c", "import mlflow; mlflow.pyfunc.load_model("
             "'models:/occlusion-estimator@champion')"], cwd=store, env=env,
            capture_output=True, text=True, timeout=300)
        assert generic.returncode == 0, generic.stderr
        assert marker.exists()
    finally:
        stored_code.write_text(original)


@pytest.mark.slow
def test_bench_serving_reports_the_servers_memory_per_request(tiny_champion):
    store, env = tiny_champion
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.bench", "serving", "--requests", "3", "--stamps", "5",
         "--port", str(free_port())], cwd=store, env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["server"] == "occmap" and figures["requests"] == 3
    assert figures["model_uri"] == "models:/occlusion-estimator@champion"
    assert len(figures["rss_after_mb"]) == 3 and figures["rss_idle_mb"] > 100  # TF is loaded
    assert figures["rss_max_mb"] == max(figures["rss_after_mb"]) <= figures["peak_mb"]
    assert figures["growth_after_first_mb"] == pytest.approx(
        figures["rss_after_mb"][-1] - figures["rss_after_mb"][0])
    # 5 stamps of 21x21x4 values as JSON: between 10 and 30 characters a value
    assert 5 * 1764 * 10 / 2**20 < figures["request_mb"] < 5 * 1764 * 30 / 2**20

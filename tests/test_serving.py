"""`mlflow models serve` on the champion estimator: maps over REST, and clear 4xx answers to
malformed requests. The server binds 127.0.0.1 on a free port and is stopped by its PID."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import VENV_BIN


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(tiny_champion):
    """Base URL of `mlflow models serve -m models:/occlusion-estimator@champion`."""
    tmp_path, env = tiny_champion
    port = _free_port()
    log = open(tmp_path / f"serve-{port}.log", "w+")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m",
         "models:/occlusion-estimator@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the workers stop with it
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"mlflow models serve exited with {process.returncode}:\n"
                            f"{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow models serve did not answer /ping within 180 s")
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def stamps_and_maps(tiny_champion):
    """Six test stamps and their maps under the in-process explainer."""
    tmp_path, _ = tiny_champion
    import keras

    import pipeline.core.models  # noqa: F401

    with np.load(tmp_path / "data" / "prepared" / "test.npz") as npz:
        stamps = npz["images"][:6]
    explainer = keras.saving.load_model(tmp_path / "models" / "estimator.keras", compile=False)
    return stamps, explainer.predict(stamps, verbose=0)


@pytest.mark.slow
def test_served_champion_answers_with_the_in_process_maps(server, stamps_and_maps):
    stamps, expected = stamps_and_maps
    status, answer = _post(f"{server}/invocations",
                           json.dumps({"inputs": stamps.tolist()}).encode())
    assert status == 200, answer
    maps = np.asarray(answer["predictions"], np.float32)
    assert maps.shape == (6, 21, 21)
    np.testing.assert_allclose(maps, expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case, body, expected", [
    ("wrong shape", lambda s: {"inputs": s[:, :20].tolist()}, "shape"),
    ("NaN", lambda s: {"inputs": np.where(np.arange(4) == 1, math.nan, s).tolist()}, "NaN"),
    ("non-numeric", lambda s: {"inputs": [[["faint", "bright"]]]}, "float"),
    ("0-255 stamps", lambda s: {"inputs": (s * 255.0).tolist()}, "outside [0, 1]"),
])
def test_malformed_requests_get_a_4xx_with_a_clear_message(server, stamps_and_maps, case, body,
                                                           expected):
    stamps, _ = stamps_and_maps
    status, answer = _post(f"{server}/invocations", json.dumps(body(stamps)).encode())
    assert 400 <= status < 500, (case, status, answer)
    assert expected in answer.get("message", ""), (case, answer)


@pytest.mark.slow
def test_out_of_range_stamps_pass_when_the_request_allows_them(server, stamps_and_maps,
                                                               tiny_champion):
    import keras

    stamps, _ = stamps_and_maps
    scaled = stamps * 3.0
    body = {"inputs": scaled.tolist(), "params": {"allow_out_of_range": True}}
    status, answer = _post(f"{server}/invocations", json.dumps(body).encode())
    assert status == 200, answer
    explainer = keras.saving.load_model(tiny_champion[0] / "models" / "estimator.keras",
                                        compile=False)
    np.testing.assert_allclose(np.asarray(answer["predictions"], np.float32),
                               explainer.predict(scaled, verbose=0), atol=1e-5)
    refused, _ = _post(f"{server}/invocations", json.dumps({"inputs": scaled.tolist()}).encode())
    assert 400 <= refused < 500

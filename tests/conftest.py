"""Shared fixtures: the repository root, and tiny synthetic stamp sets made once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import yaml

from pipeline.core.data.synthetic import make_stamps

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def venv_env(tmp_path) -> dict[str, str]:
    """Environment for subprocesses: the venv first on PATH, MLflow in a temp store."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


@pytest.fixture(scope="session")
def browser_path() -> str:
    """The headless browser the page tests load pages in: Debian's ``chromium``. Missing,
    the tests that need it are skipped, except where ``REQUIRE_BROWSER`` is set (CI:
    ``.ci/run`` installs it first), where they fail."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no chromium on PATH (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def services_folder() -> Path:
    """A new folder for ``pipeline.services`` that the OS user ``postgres`` can reach (a
    pytest tmp_path lies under a folder closed to others); skips, or fails where
    ``REQUIRE_SERVICES`` is set (CI: ``.ci/run`` installs PostgreSQL first), when the OS's
    PostgreSQL server is not installed."""
    from pipeline.services import postgres_bin

    try:
        postgres_bin()
    except RuntimeError as missing:
        if os.environ.get("REQUIRE_SERVICES"):
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    folder = Path(tempfile.mkdtemp(prefix="occmap-services-"))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def services():
    """A real PostgreSQL and a real MLflow tracking server on it, started by
    ``pipeline.services`` (what ``make services`` runs) on 127.0.0.1 for the session, and
    stopped by their PIDs after it."""
    from pipeline import services as team_services

    folder = services_folder()
    try:
        yield team_services.start(folder)
    finally:
        team_services.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def load_page(browser: str, page: Path, screenshot: Path | None = None,
              budget_ms: int = 8000, fragment: str = "") -> str:
    """The DOM of ``page`` (with the URL ``fragment`` after ``#``) after ``budget_ms`` of
    virtual time in headless ``browser``, with every network host unresolvable (so only
    what lies beside the page can load); with ``screenshot``, a 1300x1800 PNG of it is
    written there too."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu",
              "--host-resolver-rules=MAP * ~NOTFOUND", f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        subprocess.run([*common, "--window-size=1300,1800", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=120, check=True)
    return subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                          timeout=120, check=True).stdout


@pytest.fixture(scope="session")
def stamps_all_kinds():
    """400 stamps of the default preset: every kind at least 4 times (exact shares)."""
    return make_stamps(400, seed=7, preset="default")


@pytest.fixture(autouse=True)
def _restore_mlflow_uri_variable():
    """mlflow.set_tracking_uri / set_registry_uri also set MLFLOW_TRACKING_URI /
    MLFLOW_REGISTRY_URI in os.environ (and a module global for the registry); undo that
    after each test so one test's temporary store never leaks into the next."""
    from mlflow.tracking._model_registry import utils as registry_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    registry_before = registry_utils._registry_uri
    yield
    registry_utils._registry_uri = registry_before
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_json(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def started_server(command, cwd, env, url, log_path):
    """Start ``command`` (a server answering ``url``/ping) in its own process group and
    wait for it; returns the process."""
    log = open(log_path, "w+")  # noqa: SIM115 (closed by stopped_server)
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # the workers stop with it
    process.log = log
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"{command[:3]} exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            stopped_server(process)
            pytest.fail(f"{command[:3]} did not answer /ping within 180 s")
        time.sleep(1)


def stopped_server(process) -> None:
    """Stop a server started by ``started_server`` by its PID (its whole process group)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    process.log.close()


def copy_repo(repo_root: Path, destination: Path) -> None:
    """The repository's working tree as git sees it (tracked and untracked, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = repo_root / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_stage(stage, cwd, env, *args, check=True):
    """Run ``python -m pipeline.stages.<stage> *args`` in ``cwd``; with ``check`` it must
    succeed."""
    result = subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", *args], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def write_tiny_params(repo_root: Path, project: Path) -> None:
    """The repository's params.yaml at ``project``, cut to the tiny chain: 120 stamps, one
    epoch of each net (two of the doubt head), batches of 16."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["synthetic"]["n"] = 120
    params["classifier"].update(epochs=1, batch_size=16)
    params["occlusion"].update(chunk_size=7)
    params["estimator"].update(epochs=1, batch_size=16, doubt_epochs=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory, repo_root):
    """A project directory where prepare and train_classifier ran on 120 stamps, 1 epoch,
    with MLflow in a temporary store; returns (directory, environment)."""
    tmp_path = tmp_path_factory.mktemp("chain")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    write_tiny_params(repo_root, tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    for stage in ("prepare", "train_classifier"):
        run_stage(stage, tmp_path, env)
    return tmp_path, env


@pytest.fixture(scope="session")
def tiny_maps(tiny_chain):
    """``tiny_chain`` after the occlusion_maps stage."""
    run_stage("occlusion_maps", *tiny_chain)
    return tiny_chain


@pytest.fixture(scope="session")
def tiny_estimator(tiny_maps):
    """``tiny_maps`` after the train_estimator stage."""
    run_stage("train_estimator", *tiny_maps)
    return tiny_maps


@pytest.fixture(scope="session")
def tiny_evaluated(tiny_estimator):
    """``tiny_estimator`` after the evaluate stage."""
    run_stage("evaluate", *tiny_estimator)
    return tiny_estimator


@pytest.fixture(scope="session")
def tiny_champion(tiny_evaluated):
    """``tiny_evaluated`` after the promote stage, run by the rule (its metrics/promote.json
    kept as promote_rule.json) and then forced, so the tiny pair holds ``champion``."""
    tmp_path, env = tiny_evaluated
    run_stage("promote", tmp_path, env)
    metrics = tmp_path / "metrics"
    (metrics / "promote_rule.json").write_bytes((metrics / "promote.json").read_bytes())
    run_stage("promote", tmp_path, env, "--force", "--note", "tiny test pair")
    return tiny_evaluated


def naive_maps(predict, stamps, patch, stride, fill, padding, reduce):
    """(N, H, W) exact occlusion maps the slow way, the reference the engine is held to:
    one occluded copy of ``stamps`` (N, H, W, C) per ``predict`` call (a batch of one ->
    (1, K) probabilities), patch bounds and coverage worked out here."""
    n, h, w, _ = stamps.shape
    if padding == "same":
        corners = [(i - patch // 2, j - patch // 2) for i in range(0, h, stride)
                   for j in range(0, w, stride)]
    else:
        corners = [(i, j) for i in range(0, h - patch + 1, stride)
                   for j in range(0, w - patch + 1, stride)]
    maps = np.zeros((n, h, w))
    for s in range(n):
        base = np.asarray(predict(stamps[s:s + 1]))[0]
        c = int(np.argmax(base))
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for y0, x0 in corners:
            rows = slice(max(y0, 0), min(y0 + patch, h))
            cols = slice(max(x0, 0), min(x0 + patch, w))
            occluded = stamps[s].copy()
            occluded[rows, cols, :] = fill
            drop = base[c] - np.asarray(predict(occluded[None]))[0, c]
            total[rows, cols] += drop
            count[rows, cols] += 1
        if reduce == "mean":
            maps[s] = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        else:
            maps[s] = total
    return maps


# --- classifier files of a user's, written by hand in Keras 2's HDF5 layout ----------

def seed_like_model(input_shape=(21, 21, 1), last="softmax", units=2, seed=1):
    """The witness seed net's layers (conv with no activation, Dense + Activation pairs)
    in Keras 3, weights scaled up so occlusion moves p well above float noise."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(8, 3, padding="same", name="conv2d_1"),
        keras.layers.MaxPooling2D(2, name="max_pooling2d_1"),
        keras.layers.Flatten(name="flatten_1"),
        keras.layers.Dense(10, name="dense_1"),
        keras.layers.Activation("relu", name="activation_1"),
        keras.layers.Dropout(0.5, name="dropout_1"),
        keras.layers.Dense(units, name="dense_2"),
        keras.layers.Activation(last, name="activation_2"),
    ])
    model.set_weights([w * 4 for w in model.get_weights()])
    return model


def keras2_config(layer, first_shape=None) -> dict:
    """A Keras 2.1-style config of a Keras 3 layer, as the witnesses' files hold them."""
    kind = type(layer).__name__
    config = {"name": layer.name, "trainable": True}
    if first_shape is not None:
        config |= {"batch_input_shape": [None, *first_shape], "dtype": "float32"}
    if kind == "Conv2D":
        config |= {"filters": layer.filters, "kernel_size": list(layer.kernel_size),
                   "strides": list(layer.strides), "padding": layer.padding,
                   "data_format": "channels_last", "dilation_rate": [1, 1],
                   "activation": keras.activations.serialize(layer.activation),
                   "use_bias": True,
                   "kernel_initializer": {"class_name": "VarianceScaling", "config": {}}}
    elif kind == "Dense":
        config |= {"units": layer.units,
                   "activation": keras.activations.serialize(layer.activation),
                   "use_bias": True}
    elif kind == "MaxPooling2D":
        config |= {"pool_size": list(layer.pool_size), "padding": "valid",
                   "strides": list(layer.strides), "data_format": "channels_last"}
    elif kind == "Activation":
        config |= {"activation": keras.activations.serialize(layer.activation)}
    elif kind == "Dropout":
        config |= {"rate": layer.rate, "noise_shape": None, "seed": None}
    elif kind == "LeakyReLU":
        config |= {"alpha": float(layer.negative_slope)}  # Keras 2's name
    elif kind == "BatchNormalization":
        config |= {"axis": -1, "momentum": layer.momentum, "epsilon": layer.epsilon,
                   "center": True, "scale": True}
    return {"class_name": kind, "config": config}


def write_legacy_weights(h5, model):
    """model_weights/<layer>/<layer>/<weight>:0, as Keras 2.1.3 wrote them."""
    group = h5.create_group("model_weights")
    group.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
    for layer in model.layers:
        inner = group.create_group(layer.name)
        names = [f"{layer.name}/{w.path.split('/')[-1]}:0".encode() for w in layer.weights]
        inner.attrs["weight_names"] = names
        for name, value in zip(names, layer.get_weights(), strict=True):
            inner.create_dataset(name.decode(), data=value)


def write_legacy_sequential(model, path, input_shape):
    """``model`` (Sequential) as a Keras 2.1.3 HDF5 file at ``path``, in the layout of the
    witnesses' files (model_config JSON, model_weights/<layer>/<layer>/<name>:0)."""
    with h5py.File(path, "w") as h5:
        h5.attrs["keras_version"] = b"2.1.3"
        h5.attrs["backend"] = b"tensorflow"
        specs = [keras2_config(layer, input_shape if i == 0 else None)
                 for i, layer in enumerate(model.layers)]
        h5.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": specs})
        write_legacy_weights(h5, model)
    return path


@pytest.fixture(scope="module")
def spark_ready():
    """Java is there (PySpark starts a JVM); skipped without it, except where
    ``REQUIRE_SPARK`` is set (CI: ``.ci/run`` installs OpenJDK first)."""
    if shutil.which("java") is None:
        message = "no java on PATH (apt-get install openjdk-17-jre-headless)"
        if os.environ.get("REQUIRE_SPARK"):
            pytest.fail(message)
        pytest.skip(message)
    yield
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


@pytest.fixture(scope="module", autouse=True)
def mlflow_uris_kept_per_module():
    """MLflow's tracking and registry URIs as each test module found them, restored after
    it: an in-process occmap command (CliRunner) sets them, as module globals and as the
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI variables that subprocesses inherit, and a
    later module's client without an explicit registry would read another store."""
    import mlflow.tracking._model_registry.utils as registry
    import mlflow.tracking._tracking_service.utils as tracking

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = tracking._tracking_uri, registry._registry_uri, {n: os.environ.get(n) for n in names}
    yield
    tracking._tracking_uri, registry._registry_uri = saved[0], saved[1]
    for name, value in saved[2].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

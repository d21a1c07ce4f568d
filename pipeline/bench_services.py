"""Load and faults on the team services (``python -m pipeline.bench services``).

Starts its own PostgreSQL and MLflow tracking server (``pipeline.services``, in a
temporary folder, stopped at the end) and measures, in one run:

- **load**: ``clients`` processes at once, each creating a run, logging ``metrics``
  metrics one request at a time and querying the registry ``queries`` times; errors
  (must be none), p50 / p99 latency per kind of request, requests/s, and the server's
  PostgreSQL connections at their peak;
- **restart**: a run logging a metric every 0.1 s (an epoch logger's pace) while
  PostgreSQL is stopped for ``outage_s`` seconds and started again, and a model version
  registered during the outage: what the client saw (errors, the longest stall), what
  arrived, the run's and the version's final state;
- **optuna**: ``clients`` Optuna worker processes on one PostgreSQL study (the pipeline's
  storage: heartbeat, connections checked before use), each running trials of a 0.2 s
  objective; the ``optuna`` database's connections at their peak and trials finished.

Figures only: nothing here asserts (the tests check behaviour; these machines are too
noisy for timed tests).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from pipeline import services as team_services


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latency_figures(latencies: list[float]) -> dict:
    return {"n": len(latencies), "p50_ms": 1000 * (_percentile(latencies, 0.5) or 0),
            "p99_ms": 1000 * (_percentile(latencies, 0.99) or 0),
            "max_ms": 1000 * max(latencies, default=0)}


def _connections(port: int, database: str) -> int:
    import psycopg2

    with psycopg2.connect(host=team_services.HOST, port=port, user=team_services.DATABASE_USER,
                          dbname="postgres", connect_timeout=5) as connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           (database,))
            return int(cursor.fetchone()[0])


class _PeakConnections:
    """Samples a database's connection count every 0.1 s in a thread; ``peak`` after."""

    def __init__(self, port: int, database: str):
        self.port, self.database, self.peak = port, database, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _connections(self.port, self.database))
            except Exception:  # noqa: BLE001 (the database may be restarting: keep sampling)
                pass
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _load_client(tracking_uri: str, index: int, metrics: int, queries: int, queue) -> None:
    """One client of the load test: a run, ``metrics`` log_metric calls, ``queries``
    registry queries; puts (kind, seconds, error or None) tuples and a final None."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)

    def timed(kind, call):
        started = time.perf_counter()
        try:
            call()
            queue.put((kind, time.perf_counter() - started, None))
        except Exception as error:  # noqa: BLE001 (an error is a figure here)
            queue.put((kind, time.perf_counter() - started, f"{type(error).__name__}: {error}"))

    experiment = client.get_experiment_by_name("load")
    run = client.create_run(experiment.experiment_id, run_name=f"client {index}")
    for step in range(metrics):
        timed("log_metric", lambda step=step: client.log_metric(
            run.info.run_id, f"m{step % 20}", step * 0.5, step=step))
        if queries and step % max(1, metrics // queries) == 0:
            timed("registry", lambda: (
                client.search_registered_models(max_results=10),
                client.get_model_version_by_alias("load-model", "champion")))
    client.set_terminated(run.info.run_id)
    queue.put(None)


def bench_load(services, clients: int, metrics: int, queries: int) -> dict:
    import mlflow

    client = mlflow.MlflowClient(services.tracking_uri)
    experiment = client.create_experiment("load")
    seed_run = client.create_run(experiment)
    client.log_text(seed_run.info.run_id, "a model", "model/MLmodel")
    client.set_terminated(seed_run.info.run_id)
    client.create_registered_model("load-model")
    version = client.create_model_version("load-model", f"{seed_run.info.artifact_uri}/model",
                                          run_id=seed_run.info.run_id)
    client.set_registered_model_alias("load-model", "champion", version.version)

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_load_client,
                                 args=(services.tracking_uri, i, metrics, queries, queue))
                 for i in range(clients)]
    started = time.perf_counter()
    with _PeakConnections(services.postgres_port, "mlflow") as peak:
        for process in processes:
            process.start()
        results, done = [], 0
        while done < clients:
            item = queue.get(timeout=600)
            if item is None:
                done += 1
            else:
                results.append(item)
        for process in processes:
            process.join()
    wall = time.perf_counter() - started
    errors = [error for _, _, error in results if error]
    runs = client.search_runs([experiment], filter_string="attributes.run_name LIKE 'client%'")
    logged = sum(len(client.get_metric_history(r.info.run_id, f"m{k}"))
                 for r in runs for k in range(20))
    return {
        "clients": clients, "metrics_per_client": metrics, "wall_s": wall,
        "requests_per_s": len(results) / wall, "errors": len(errors),
        "first_errors": errors[:3],
        "log_metric": _latency_figures([s for kind, s, e in results
                                        if kind == "log_metric" and not e]),
        "registry": _latency_figures([s for kind, s, e in results
                                      if kind == "registry" and not e]),
        "metric_points_logged": logged, "metric_points_sent": clients * metrics,
        "runs_finished": sum(r.info.status == "FINISHED" for r in runs),
        "mlflow_db_connections_peak": peak.peak,
    }


def bench_restart(services, outage_s: float, duration_s: float) -> dict:
    """A run logs while PostgreSQL is stopped and started again; a version is registered
    in the outage."""
    import mlflow

    client = mlflow.MlflowClient(services.tracking_uri)
    experiment = client.create_experiment("restart")
    run = client.create_run(experiment, run_name="logging through a restart")
    client.log_text(run.info.run_id, "a model", "model/MLmodel")
    client.create_registered_model("restart-model")
    sent, failures, stalls = [], [], []
    registration: dict = {}

    def log_loop():
        step, deadline = 0, time.monotonic() + duration_s
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
                sent.append(step)
            except Exception as error:  # noqa: BLE001
                failures.append(f"step {step}: {type(error).__name__}: {str(error)[:200]}")
            stalls.append(time.perf_counter() - started)
            step += 1
            time.sleep(0.1)

    def register_in_outage():
        started = time.perf_counter()
        try:
            version = client.create_model_version(
                "restart-model", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            registration.update(result="registered", version=version.version)
        except Exception as error:  # noqa: BLE001
            registration.update(result=f"{type(error).__name__}: {str(error)[:200]}")
        registration["seconds"] = time.perf_counter() - started

    logger = threading.Thread(target=log_loop)
    logger.start()
    time.sleep(min(3.0, duration_s / 4))
    postmaster = team_services._postmaster_pid(services.folder)
    down_at = time.perf_counter()
    team_services.stop_postgres(services.folder)
    registrar = threading.Thread(target=register_in_outage)
    registrar.start()
    time.sleep(outage_s)
    team_services.start(services.folder)
    up_at = time.perf_counter()
    registrar.join(timeout=600)
    logger.join(timeout=600)
    try:
        client.set_terminated(run.info.run_id)
        final_status = client.get_run(run.info.run_id).info.status
    except Exception as error:  # noqa: BLE001
        final_status = f"could not end it: {type(error).__name__}"
    history = client.get_metric_history(run.info.run_id, "loss")
    versions = client.search_model_versions("name = 'restart-model'")
    return {
        "outage_s": up_at - down_at, "postmaster_before": postmaster,
        "logged_ok": len(sent), "log_failures": len(failures), "first_failures": failures[:3],
        "longest_call_s": max(stalls, default=0.0),
        "points_in_store": len(history), "run_status": final_status,
        "registration": registration,
        "versions": [{"version": v.version, "status": v.status} for v in versions],
    }


def _optuna_worker(storage_url: str, study_name: str, trials: int) -> None:
    import optuna

    from pipeline.core import search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = search.open_storage(storage_url, "", heartbeat_interval=1, grace_period=5)
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.optimize(lambda trial: (time.sleep(0.2), trial.suggest_float("x", 0, 1))[1],
                   n_trials=trials)


def bench_optuna(services, workers: int, trials: int) -> dict:
    import optuna

    from pipeline.core import search

    storage = search.open_storage(services.optuna_storage, "", heartbeat_interval=1,
                                  grace_period=5)
    name = f"connections-{int(time.time())}"
    optuna.create_study(study_name=name, storage=storage)  # once, before the workers
    idle = _connections(services.postgres_port, "optuna")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_optuna_worker,
                                 args=(services.optuna_storage, name, trials))
                 for _ in range(workers)]
    started = time.perf_counter()
    with _PeakConnections(services.postgres_port, "optuna") as peak:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=600)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    return {"workers": workers, "trials_per_worker": trials, "wall_s": wall,
            "optuna_db_connections_before": idle, "optuna_db_connections_peak": peak.peak,
            "trials": {state: states.count(state) for state in sorted(set(states))},
            "exit_codes": [p.exitcode for p in processes]}


def bench_services(clients: int, metrics: int, queries: int, outage_s: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="occmap-bench-services-"))
    folder.chmod(0o755)  # the OS user postgres must reach the cluster inside
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        started = time.perf_counter()
        services = team_services.start(folder)
        figures = {"start_s": time.perf_counter() - started}
        figures["load"] = bench_load(services, clients, metrics, queries)
        figures["restart"] = bench_restart(services, outage_s, duration_s=outage_s + 12)
        figures["optuna"] = bench_optuna(services, clients, 10)
        return figures
    finally:
        team_services.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def print_services(f: dict) -> None:
    load, restart, opt = f["load"], f["restart"], f["optuna"]
    print(f"services started in {f['start_s']:.1f} s")
    print(f"load: {load['clients']} clients x {load['metrics_per_client']} metrics: "
          f"{load['errors']} errors, {load['requests_per_s']:.0f} requests/s; log_metric p50 "
          f"{load['log_metric']['p50_ms']:.1f} ms, p99 {load['log_metric']['p99_ms']:.1f} ms; "
          f"registry p50 {load['registry']['p50_ms']:.1f} ms, p99 "
          f"{load['registry']['p99_ms']:.1f} ms; {load['metric_points_logged']} of "
          f"{load['metric_points_sent']} points stored; mlflow db connections peak "
          f"{load['mlflow_db_connections_peak']}")
    print(f"restart: PostgreSQL down {restart['outage_s']:.1f} s while logging: "
          f"{restart['logged_ok']} calls ok, {restart['log_failures']} failed, longest call "
          f"{restart['longest_call_s']:.1f} s, {restart['points_in_store']} points stored, run "
          f"{restart['run_status']}; version registered in the outage: "
          f"{restart['registration']}; versions {restart['versions']}")
    print(f"optuna: {opt['workers']} workers: optuna db connections "
          f"{opt['optuna_db_connections_before']} before, peak "
          f"{opt['optuna_db_connections_peak']}; trials {opt['trials']}")

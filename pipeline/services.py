"""A team's services on one machine: PostgreSQL and an MLflow tracking server on it.

    python -m pipeline.services start [--dir services]   (make services)
    python -m pipeline.services stop [--dir services]    (make services-stop)
    python -m pipeline.services status [--dir services]

``start`` initialises a PostgreSQL cluster on the first call (the OS's PostgreSQL server;
``make services`` installs it through apt when missing), starts it bound to 127.0.0.1 on a
free port, creates the databases ``mlflow`` and ``optuna``, starts ``mlflow server`` on
the first (proxied artifact storage in a folder), and returns when both answer, printing

    MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
    OPTUNA_STORAGE=postgresql+psycopg2://hits@127.0.0.1:PORT/optuna

each on its own line (``eval "$(make -s services)"`` or copy them). Services already up are
left as they are. ``stop`` stops both by their own PIDs and keeps the data for the next
start, which reuses the same ports while they are free.

The folder (git-ignored ``services/`` by default) holds::

    postgres/     the database cluster (owned by the OS user ``postgres`` when run as root:
                  PostgreSQL refuses to run as root)
    artifacts/    the tracking server's artifact storage (clients reach it through the server)
    logs/         postgres.log, mlflow.log
    state.json    the ports
    mlflow.json   the tracking server's PID and its start time

Trust authentication on 127.0.0.1 only: these are one machine's services. A team server
on a network needs passwords and TLS (docker-compose.yml, docs/services.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.glue.files import atomic_paths
from pipeline.glue.processes import start_time

HOST = "127.0.0.1"
DATABASE_USER = "hits"
DATABASES = ("mlflow", "optuna")
DEFAULT_FOLDER = Path("services")
START_TIMEOUT_S = 180  # the server's first start migrates an empty database: ~30 s here
STOP_TIMEOUT_S = 30


@dataclass(frozen=True)
class Services:
    """Where the services of ``folder`` answer."""

    folder: Path
    postgres_port: int
    mlflow_port: int

    def database_url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on the PostgreSQL server (psycopg2 driver)."""
        return f"postgresql+psycopg2://{DATABASE_USER}@{HOST}:{self.postgres_port}/{database}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def optuna_storage(self) -> str:
        return self.database_url("optuna")

    def lines(self) -> str:
        """The two ``NAME=value`` lines ``start`` prints."""
        return f"MLFLOW_TRACKING_URI={self.tracking_uri}\nOPTUNA_STORAGE={self.optuna_storage}"


def postgres_bin() -> Path:
    """The folder of the OS's PostgreSQL server programs (``initdb``, ``pg_ctl``,
    ``postgres``): ``PG_BIN`` when set, else the newest ``/usr/lib/postgresql/*/bin``, else
    where ``initdb`` is on PATH."""
    candidates = [Path(os.environ["PG_BIN"])] if os.environ.get("PG_BIN") else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda path: int(path.parent.name) if path.parent.name.isdigit()
                         else 0, reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise RuntimeError("no PostgreSQL server programs (initdb, pg_ctl) found: install the "
                       "OS package (apt-get install postgresql; make services does) or set "
                       "PG_BIN to their folder")


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens on it on 127.0.0.1, else a port the OS picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as probe:
            # as servers bind: a port just left by a stopped server (TIME_WAIT) is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def start(folder: Path = DEFAULT_FOLDER) -> Services:
    """Start PostgreSQL and the tracking server of ``folder`` (each unless it is up
    already) and return where they answer, once both do."""
    folder = Path(folder).resolve()
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    state = _read_json(folder / "state.json")
    postgres_port = _start_postgres(folder, state.get("postgres_port"))
    _create_databases(postgres_port)
    running = _running_server(folder)
    if running and state.get("postgres_port") != postgres_port:
        # PostgreSQL came back on another port: the server's store URL names the old one
        stop_server(folder)
        running = None
    mlflow_port = running if running else free_port(state.get("mlflow_port"))
    services = Services(folder, postgres_port, mlflow_port)
    _write_json(folder / "state.json", {"postgres_port": postgres_port,
                                        "mlflow_port": mlflow_port})
    if not running:
        _start_server(services)
    return services


def stop(folder: Path = DEFAULT_FOLDER) -> list[str]:
    """Stop the tracking server, then PostgreSQL, each by its PID; the data stays. Returns
    what was stopped."""
    folder = Path(folder).resolve()
    return [name for name in (stop_server(folder), stop_postgres(folder)) if name]


def stop_server(folder: Path) -> str | None:
    """Stop ``folder``'s tracking server by its PID (its whole session); what was stopped."""
    server = _read_json(folder / "mlflow.json")
    stopped = None
    if server and _alive(server):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server["pid"], signal.SIGTERM)  # its own session: the workers too
        if not _wait(lambda: not _alive(server), STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server["pid"], signal.SIGKILL)
        stopped = f"mlflow server (pid {server['pid']})"
    (folder / "mlflow.json").unlink(missing_ok=True)
    return stopped


def stop_postgres(folder: Path) -> str | None:
    """Stop ``folder``'s PostgreSQL by the PID in its postmaster.pid; what was stopped."""
    postmaster = _postmaster_pid(folder)
    if postmaster is None:
        return None
    # SIGINT is PostgreSQL's "fast" shutdown: sessions ended, data flushed, no recovery
    with contextlib.suppress(ProcessLookupError):
        os.kill(postmaster, signal.SIGINT)
    if not _wait(lambda: start_time(postmaster) is None, STOP_TIMEOUT_S):
        raise RuntimeError(f"{folder / 'postgres'}: PostgreSQL (pid {postmaster}) did not "
                           f"stop within {STOP_TIMEOUT_S} s")
    return f"postgresql (pid {postmaster})"


def status(folder: Path = DEFAULT_FOLDER) -> dict[str, bool]:
    """{"postgresql": up?, "mlflow": up?} for the services of ``folder``."""
    folder = Path(folder).resolve()
    return {"postgresql": _postmaster_pid(folder) is not None,
            "mlflow": _running_server(folder) is not None}


def _as_postgres_user(command: list[str]) -> list[str]:
    """``command`` as the OS user ``postgres`` when this process is root (initdb and
    postgres refuse to run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _give_to_postgres(*paths: Path) -> None:
    if os.geteuid() == 0:
        for path in paths:
            shutil.chown(path, "postgres", "postgres")


def _start_postgres(folder: Path, preferred_port: int | None) -> int:
    """Initialise (first time) and start the cluster in ``folder/postgres``; returns its
    port. A cluster already running is left alone."""
    data = folder / "postgres"
    running = _postmaster_pid(folder)
    if running is not None:
        return int((data / "postmaster.pid").read_text().splitlines()[3])
    programs = postgres_bin()
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root, PostgreSQL needs the OS user 'postgres' "
                               "(apt-get install postgresql creates it)") from None
    if not (data / "PG_VERSION").is_file():
        if data.exists() and any(data.iterdir()):
            raise RuntimeError(f"{data}: not empty and not a PostgreSQL cluster (no "
                               "PG_VERSION); move it away to start afresh")
        data.mkdir(mode=0o700, exist_ok=True)
        _give_to_postgres(data)
        if os.geteuid() == 0 and subprocess.run(_as_postgres_user(["test", "-w", str(data)]),
                                                check=False).returncode != 0:
            raise RuntimeError(f"{data}: the OS user 'postgres' cannot reach this folder "
                               "(a parent folder is closed to others); choose a folder "
                               "under an open parent (--dir)")
        _run(_as_postgres_user([str(programs / "initdb"), "-D", str(data), "-A", "trust",
                                "-U", DATABASE_USER, "-E", "UTF8", "--locale=C"]),
             f"{data}: initdb")
    log = folder / "logs" / "postgres.log"
    log.touch()
    _give_to_postgres(log)
    port = free_port(preferred_port)
    options = f"-p {port} -k {data} -c listen_addresses={HOST}"
    _run(_as_postgres_user([str(programs / "pg_ctl"), "-D", str(data), "-l", str(log),
                            "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start"]),
         f"{data}: pg_ctl start (log: {log})")
    return port


def _create_databases(port: int) -> None:
    import psycopg2

    connection = psycopg2.connect(host=HOST, port=port, user=DATABASE_USER, dbname="postgres",
                                  connect_timeout=10)
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def _start_server(services: Services) -> None:
    """``mlflow server`` on the ``mlflow`` database, in its own session, logging to
    ``logs/mlflow.log``; returns once ``/health`` answers ``OK``."""
    folder = services.folder
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    log = folder / "logs" / "mlflow.log"
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", services.database_url("mlflow"),
               "--artifacts-destination", str(artifacts),
               "--host", HOST, "--port", str(services.mlflow_port), "--workers", "1"]
    # no job runner: this server serves tracking and the registry, nothing else
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True, cwd=folder)
    _write_json(folder / "mlflow.json", {"pid": process.pid,
                                         "started": start_time(process.pid) or "",
                                         "port": services.mlflow_port})

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}; its "
                               f"log {log} ends:\n{_tail(log)}")
        return _health(services.mlflow_port)

    if not _wait(answers, START_TIMEOUT_S):
        raise RuntimeError(f"mlflow server (pid {process.pid}) did not answer on "
                           f"{services.tracking_uri}/health within {START_TIMEOUT_S} s; "
                           f"see {log}")


def _running_server(folder: Path) -> int | None:
    """The port of ``folder``'s tracking server when its process lives and answers."""
    server = _read_json(folder / "mlflow.json")
    if server and _alive(server) and _health(server["port"]):
        return server["port"]
    return None


def _postmaster_pid(folder: Path) -> int | None:
    """The PID of ``folder``'s running PostgreSQL (from its postmaster.pid), else None."""
    try:
        lines = (folder / "postgres" / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
    return pid if pid is not None and start_time(pid) is not None else None


def _alive(recorded: dict) -> bool:
    """Whether the process recorded as {pid, started} still runs (not a reused PID)."""
    now = start_time(recorded["pid"])
    return now is not None and (not recorded.get("started") or now == recorded["started"])


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5) as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError):
        return False


def _wait(condition, timeout_s: float, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _write_json(path: Path, value: dict) -> None:
    with atomic_paths(path) as (temp,):
        temp.write_text(json.dumps(value, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.services",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_FOLDER,
                        help="the services' folder (default: services/)")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start(args.dir).lines())
        elif args.action == "stop":
            print("\n".join(f"stopped {name}" for name in stop(args.dir)) or "nothing ran")
        else:
            for name, up in status(args.dir).items():
                print(f"{name}: {'up' if up else 'down'}")
    except RuntimeError as error:
        sys.exit(f"services: {error}")


if __name__ == "__main__":
    main()

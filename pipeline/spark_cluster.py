"""A Spark standalone cluster on this machine: one master and N workers on 127.0.0.1.

    python -m pipeline.spark_cluster start [--dir spark-cluster] [--workers 2]
                                           [--worker-cores 1] [--worker-memory 2g]
                                                                (make spark-cluster)
    python -m pipeline.spark_cluster stop [--dir spark-cluster]   (make spark-cluster-stop)
    python -m pipeline.spark_cluster status [--dir spark-cluster]

Why: the same Spark job that runs on ``local[*]`` must run on a real cluster, where the
driver, the executors and the Python workers are separate processes that talk over the
network. A standalone cluster on one machine is the smallest such cluster, and it is what
the ``occlusion_maps`` stage's timings on Spark are measured on (issue 20, item 4).

``start`` launches the master and the workers with PySpark's own launcher
(``<pyspark>/bin/spark-class``: the pinned wheel has no ``sbin/start-master.sh``), each in
its own session, everything bound to 127.0.0.1 (``SPARK_LOCAL_IP`` also binds the web UIs
there, which Spark would otherwise open on 0.0.0.0). It returns once the master answers and
the N workers have registered with it, printing

    SPARK_MASTER=spark://127.0.0.1:PORT

alone on stdout (everything else goes to stderr). A cluster already up is left as it is
(missing workers are started). ``stop`` ends every process by its recorded PID (SIGTERM to
its session, so the executors a worker started go too; SIGKILL after a grace period), only
when that PID still is the Spark process we started.

The folder (git-ignored ``spark-cluster/`` by default) holds::

    master.pid, worker-<i>.pid   the PIDs
    cluster.json                 the master's ports (reused by the next start while free)
    logs/                        master.log, worker-<i>.log (SPARK_LOG_DIR)
    work/worker-<i>/             each worker's work folder: the executors' stdout/stderr
    conf/                        an empty SPARK_CONF_DIR: no stray spark-env.sh or
                                 spark-defaults.conf changes what starts here

The Python workers run ``PYSPARK_PYTHON``; the workers get this interpreter (the project's
venv) as the default, but PySpark takes the value from the driver's environment, so a
driver set ``PYSPARK_PYTHON`` too when its ``python3`` is not the venv's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.glue.files import atomic_paths, write_json
from pipeline.glue.processes import start_time
from pipeline.services import free_port

HOST = "127.0.0.1"
DEFAULT_FOLDER = Path("spark-cluster")
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# three JVMs (plus their launcher JVMs) starting at once on 2 cores: 10-20 s seen here
START_TIMEOUT_S = 120
STOP_GRACE_S = 10


@dataclass(frozen=True)
class Cluster:
    """Where the cluster of ``folder`` answers."""

    folder: Path
    port: int
    webui_port: int

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    @property
    def webui_url(self) -> str:
        return f"http://{HOST}:{self.webui_port}"

    def line(self) -> str:
        """The ``SPARK_MASTER=...`` line ``start`` prints."""
        return f"SPARK_MASTER={self.master_url}"


def spark_home() -> Path:
    """The installed pyspark package: with the wheel it is SPARK_HOME (bin/, jars/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def master_state(cluster: Cluster, timeout_s: float = 5) -> dict | None:
    """The master's JSON (``http://127.0.0.1:<webui>/json/``: ``url``, ``status``,
    ``workers``, ``aliveworkers``, ...), None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{cluster.webui_url}/json/",
                                    timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def start(folder: Path = DEFAULT_FOLDER, workers: int = 2, worker_cores: int = 1,
          worker_memory: str = "2g", timeout_s: float = START_TIMEOUT_S) -> Cluster:
    """Start the master and ``workers`` workers of ``folder`` (each unless it runs
    already) and return the cluster once the master answers and at least ``workers``
    workers are alive on it. On failure, whatever this call started is stopped again and
    a RuntimeError names the log to read."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise RuntimeError("no java on PATH and no JAVA_HOME: install a JDK "
                           "(apt-get install openjdk-17-jre-headless; make spark-cluster does)")
    if workers < 1 or worker_cores < 1:
        raise RuntimeError("--workers and --worker-cores must be at least 1")
    folder = Path(folder).resolve()
    for sub in ("logs", "work", "conf"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    started: list[tuple[str, subprocess.Popen]] = []
    cluster = _running_cluster(folder)
    try:
        if cluster is None:
            # workers left without their master (it died) would never register again
            stop(folder, quiet=True)
            state = _read_json(folder / "cluster.json")
            cluster = Cluster(folder, free_port(state.get("port")),
                              free_port(state.get("webui_port")))
            write_json(folder / "cluster.json", {"port": cluster.port,
                                                  "webui_port": cluster.webui_port})
            started.append(("master", _launch(cluster, "master", [
                MASTER_CLASS, "--host", HOST, "--port", str(cluster.port),
                "--webui-port", str(cluster.webui_port)])))
        for index in range(1, workers + 1):
            name = f"worker-{index}"
            if _recorded_pid(folder, name, cluster) is not None:
                continue
            work = folder / "work" / name
            work.mkdir(parents=True, exist_ok=True)
            # --port 0 / --webui-port 0: the OS picks free ports when the socket is bound,
            # so two workers (or another program) can never race for the same one; the
            # master's JSON lists where each worker ended up (webuiaddress)
            started.append((name, _launch(cluster, name, [
                WORKER_CLASS, cluster.master_url, "--host", HOST, "--port", "0",
                "--webui-port", "0", "--cores", str(worker_cores),
                "--memory", worker_memory, "--work-dir", str(work)])))
        _wait_registered(cluster, workers, started, timeout_s)
    except BaseException:
        for name, process in reversed(started):
            _stop_one(folder, name, process.pid)
        raise
    return cluster


def stop(folder: Path = DEFAULT_FOLDER, quiet: bool = False) -> list[str]:
    """Stop the workers, then the master, of ``folder`` by their recorded PIDs (a PID
    that is no longer our Spark process is left alone); remove the PID files. A no-op
    when nothing runs. Returns what was stopped."""
    folder = Path(folder).resolve()
    names = sorted((path.stem for path in folder.glob("worker-*.pid")),
                   key=lambda name: (len(name), name))  # worker-2 before worker-10
    stopped = []
    for name in [*names, "master"]:
        pid = _read_pid(folder / f"{name}.pid")
        if pid is not None and _is_ours(pid, name):
            _stop_one(folder, name, pid)
            stopped.append(f"{name} (pid {pid})")
        (folder / f"{name}.pid").unlink(missing_ok=True)
    if stopped and not quiet:
        print(f"spark cluster {folder}: stopped {', '.join(stopped)}", file=sys.stderr)
    return stopped


def status(folder: Path = DEFAULT_FOLDER) -> dict:
    """{"master": URL or None, "pids": {name: pid of each live process},
    "aliveworkers": count the master reports (None when it does not answer)}."""
    folder = Path(folder).resolve()
    cluster = _running_cluster(folder)
    pids = {}
    for path in sorted(folder.glob("*.pid")):
        pid = _read_pid(path)
        if pid is not None and _is_ours(pid, path.stem):
            pids[path.stem] = pid
    state = master_state(cluster) if cluster else None
    return {"master": cluster.master_url if cluster else None, "pids": pids,
            "aliveworkers": state.get("aliveworkers") if state else None}


def _environment(folder: Path) -> dict[str, str]:
    """The daemons' environment: everything on 127.0.0.1, logs and work in ``folder``,
    the venv's Python for the Python workers."""
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(spark_home()),  # else find-spark-home asks whichever python3
        "SPARK_CONF_DIR": str(folder / "conf"),
        # SPARK_LOCAL_IP binds the RPC endpoints *and* the web UIs (0.0.0.0 otherwise);
        # the host name is what URLs (the master's JSON, the UIs' links) advertise
        "SPARK_LOCAL_IP": HOST,
        "SPARK_LOCAL_HOSTNAME": HOST,
        "SPARK_PUBLIC_DNS": HOST,
        "SPARK_LOG_DIR": str(folder / "logs"),
        "SPARK_WORKER_DIR": str(folder / "work"),
        "PYSPARK_PYTHON": sys.executable,
        # a port taken between free_port() and the bind must fail, not move silently to
        # port+1 where nobody looks for it; and no REST submission server (Spark 4 opens
        # one on the fixed port 6066 by default): jobs come through the master URL only
        "SPARK_MASTER_OPTS": " ".join([os.environ.get("SPARK_MASTER_OPTS", ""),
                                       "-Dspark.port.maxRetries=0",
                                       "-Dspark.master.rest.enabled=false"]).strip(),
    })
    return env


def _launch(cluster: Cluster, name: str, arguments: list[str]) -> subprocess.Popen:
    """``spark-class ARGUMENTS`` in its own session (so stop can end it with everything it
    started), output to ``logs/<name>.log``; its PID goes to ``<name>.pid``. spark-class
    ``exec``s the JVM, so the PID is the JVM's."""
    folder = cluster.folder
    log = folder / "logs" / f"{name}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *arguments],
                                   stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=_environment(folder),
                                   start_new_session=True, cwd=folder)
    with atomic_paths(folder / f"{name}.pid") as (temp,):
        temp.write_text(f"{process.pid}\n")
    print(f"spark cluster: started {name} (pid {process.pid}), log {log}", file=sys.stderr)
    return process


def _wait_registered(cluster: Cluster, workers: int,
                     started: list[tuple[str, subprocess.Popen]], timeout_s: float) -> None:
    """Return once the master answers with at least ``workers`` alive workers; raise,
    naming the log to read, when a process just started exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        for name, process in started:
            if process.poll() is not None:
                log = cluster.folder / "logs" / f"{name}.log"
                raise RuntimeError(f"spark {name} exited with code {process.returncode}; "
                                   f"its log {log} ends:\n{_tail(log)}")
        state = master_state(cluster)
        if state and state.get("aliveworkers", 0) >= workers:
            return
        time.sleep(0.5)
    if state is None:
        raise RuntimeError(f"the spark master did not answer on {cluster.webui_url}/json/ "
                           f"within {timeout_s:.0f} s; see {cluster.folder / 'logs'}"
                           "/master.log")
    raise RuntimeError(f"{state.get('aliveworkers', 0)} of {workers} spark workers "
                       f"registered with {cluster.master_url} within {timeout_s:.0f} s; see "
                       f"{cluster.folder / 'logs'}/worker-*.log and master.log")


def _running_cluster(folder: Path) -> Cluster | None:
    """The cluster of ``folder`` when its recorded master process still runs."""
    state = _read_json(folder / "cluster.json")
    if "port" not in state or "webui_port" not in state:
        return None
    cluster = Cluster(folder, state["port"], state["webui_port"])
    return cluster if _recorded_pid(folder, "master", cluster) is not None else None


def _recorded_pid(folder: Path, name: str, cluster: Cluster) -> int | None:
    """The PID in ``<name>.pid`` when it is our Spark process for ``cluster``."""
    pid = _read_pid(folder / f"{name}.pid")
    return pid if pid is not None and _is_ours(pid, name, cluster) else None


def _is_ours(pid: int, name: str, cluster: Cluster | None = None) -> bool:
    """Whether ``pid`` still is the Spark daemon ``name`` we started (its command line
    names the daemon's class and, given ``cluster``, that master): a PID reused by another
    process after a reboot or a crash must not be killed."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if start_time(pid) is None:
        return False  # a zombie: exited, its command line is gone
    arguments = [argument.decode(errors="replace") for argument in arguments]
    klass = MASTER_CLASS if name == "master" else WORKER_CLASS
    if klass not in arguments:
        return False
    if cluster is None:
        return True
    if name == "master":
        return str(cluster.port) in arguments[arguments.index(klass):]
    return cluster.master_url in arguments


def _stop_one(folder: Path, name: str, pid: int) -> None:
    """SIGTERM to ``pid``'s session (the daemon and the executors it started), SIGKILL
    to what is left after ``STOP_GRACE_S``; then the PID file goes."""
    group = pid if _group_of(pid) == pid else None

    def signal_all(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group is not None:
                os.killpg(group, signum)
            else:
                os.kill(pid, signum)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and _group_alive(pid, group):
        time.sleep(0.2)
    if _group_alive(pid, group):
        signal_all(signal.SIGKILL)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and _group_alive(pid, group):
            time.sleep(0.2)
    (folder / f"{name}.pid").unlink(missing_ok=True)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pid: int, group: int | None) -> bool:
    """Whether ``pid`` or (given) any process of group ``group`` still runs."""
    if start_time(pid) is not None:
        return True
    if group is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, 0)
        # killpg(0) also succeeds for zombies of the group: look at each one
        return any(start_time(member) is not None for member in _members(group))
    return False


def _members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == group:
                members.append(int(stat.parent.name))
    return members


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.spark_cluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_FOLDER,
                        help="the cluster's folder (default: spark-cluster/)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    parser.add_argument("--worker-cores", type=int, default=1,
                        help="cores each worker offers (default 1)")
    parser.add_argument("--worker-memory", default="2g",
                        help="memory each worker offers its executors (default 2g)")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            cluster = start(args.dir, workers=args.workers, worker_cores=args.worker_cores,
                            worker_memory=args.worker_memory)
            print(f"spark cluster: master UI {cluster.webui_url}", file=sys.stderr)
            print(cluster.line(), flush=True)
        elif args.action == "stop":
            if not stop(args.dir):
                print("spark cluster: nothing ran", file=sys.stderr)
        else:
            found = status(args.dir)
            print(f"master: {found['master'] or 'down'}")
            alive = found["aliveworkers"]
            print(f"alive workers: {'-' if alive is None else alive}")
            for name, pid in found["pids"].items():
                print(f"{name}: pid {pid}")
    except RuntimeError as error:
        sys.exit(f"spark cluster: {error}")


if __name__ == "__main__":
    main()

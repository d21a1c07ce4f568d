"""Who owns a run, a model version or a temporary file, and whether that process still lives.

A killed stage cannot clean up after itself, so what it leaves behind is recognised on the
next start by its owner: the host name, the PID and the PID's start time (so a PID reused
by a later process does not count as the owner). Only owners on this host can be judged;
anything owned elsewhere is left alone.

Also: fault points (``fault_point``), where the fault-injection tests kill a stage with
SIGKILL, and the signal handling every stage runs under (``guard_stage_process``).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

HOST_TAG, PID_TAG, STARTED_TAG = "process.host", "process.pid", "process.started"
# PIPELINE_FAULT_AT=<stage>:<point> kills the process there with SIGKILL (tests only);
# with PIPELINE_FAULT_ACTION=hang it waits there instead, to be killed from outside.
FAULT_VARIABLE, FAULT_ACTION_VARIABLE = "PIPELINE_FAULT_AT", "PIPELINE_FAULT_ACTION"


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux /proc), ``""``
    where /proc is not available but the process exists, None when there is no such
    process or it has exited (a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        stat = None
    if stat is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    # fields 3 (state) and 22; the command name (field 2) may hold spaces: count from ")"
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def owner() -> dict[str, str]:
    """Tags naming this process: {process.host, process.pid, process.started}."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid),
            STARTED_TAG: start_time(pid) or ""}


def owner_state(tags: dict) -> str:
    """``alive``, ``dead`` or ``unknown`` (no owner tags, or another host) for the owner
    recorded in ``tags``."""
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if not host or not pid or not pid.isdigit() or host != socket.gethostname():
        return "unknown"
    started = start_time(int(pid))
    if started is None:
        return "dead"
    recorded = tags.get(STARTED_TAG, "")
    return "dead" if recorded and started and started != recorded else "alive"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    return start_time(pid) is not None


def fault_point(name: str) -> None:
    """SIGKILL this process when ``PIPELINE_FAULT_AT`` equals ``name``
    (``<stage>:<point>``), or sleep there for good with ``PIPELINE_FAULT_ACTION=hang``:
    how the fault-injection tests stop a stage at an exact point. Unset (always, outside
    those tests), it only reads one environment variable."""
    if os.environ.get(FAULT_VARIABLE) != name:
        return
    print(f"fault point {name} reached (pid {os.getpid()})", flush=True)
    sys.stderr.flush()
    if os.environ.get(FAULT_ACTION_VARIABLE) == "hang":
        while True:  # a signal handler (SIGTERM: SystemExit) ends the wait
            time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)


# shells DVC may start a stage's command through (``$SHELL -c CMD``, /bin/sh without
# $SHELL); dash does not exec the last command, so the stage's parent can be one of them
SHELL_NAMES = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh"})
# how often a stage started through a shell checks that its ``dvc`` process still lives
PARENT_POLL_SECONDS = 0.5


def _command_and_parent(pid: int) -> tuple[str, int] | None:
    """The command name and the parent PID of ``pid`` from /proc, None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    return name, int(stat.rsplit(")", 1)[1].split()[1])


def launcher_pid() -> int:
    """The PID of the process that launched this one, looking through the shells in
    between (``SHELL_NAMES``): under DVC, the ``dvc`` process. 1 when orphaned."""
    pid = os.getppid()
    while pid > 1:
        found = _command_and_parent(pid)
        if found is None or found[0] not in SHELL_NAMES:
            return pid
        pid = found[1]
    return pid


def _terminate_when_gone(pid: int, started: str | None) -> None:
    """Send this process SIGTERM once process ``pid`` (started at ``started``) is gone."""
    while start_time(pid) == started:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def guard_stage_process() -> None:
    """Make a stage die cleanly instead of half-way:

    - SIGTERM raises ``SystemExit(143)``, so open runs end FAILED and temporary files are
      removed by the context managers that made them (Python's default would exit without
      running them);
    - under DVC (``DVC_STAGE`` is set), the stage gets SIGTERM when the ``dvc`` process
      dies: a killed ``dvc repro`` would otherwise leave the stage running as an orphan
      that registers a model after DVC's lock is gone. Linux's parent-death signal covers
      a stage whose parent is ``dvc`` itself (``SHELL=/bin/bash``: bash execs the
      command); a stage started through a shell that stays in between (dash, DVC's
      ``/bin/sh`` when ``$SHELL`` is unset) would outlive ``dvc`` with only that, so a
      daemon thread also watches the ``dvc`` process (found through the shells).
    """
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import threading

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    launcher = launcher_pid()
    launcher_started = start_time(launcher)
    if os.getppid() != parent or parent == 1 or launcher == 1 or launcher_started is None:
        raise SystemExit(128 + signal.SIGTERM)  # the launcher died before we could watch it
    if launcher != parent:
        threading.Thread(target=_terminate_when_gone, args=(launcher, launcher_started),
                         name="watch-dvc", daemon=True).start()

"""Owners of what a stage leaves behind, the fault points, and clean deaths."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.glue import processes
from pipeline.glue.files import TEMP_NAME, atomic_paths, remove_stale_temps


def _stage_pid(shell_pid: int) -> int:
    """The one child of ``shell_pid`` (the stage a shell started), from /proc."""
    children = Path(f"/proc/{shell_pid}/task/{shell_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_owner_state_tells_this_process_from_a_dead_one_and_a_reused_pid():
    mine = processes.owner()
    assert mine[processes.PID_TAG] == str(os.getpid())
    assert mine[processes.HOST_TAG] == socket.gethostname()
    assert processes.owner_state(mine) == "alive"
    assert processes.owner_state({**mine, processes.PID_TAG: str(_dead_pid())}) == "dead"
    # the same PID started at another time is another process: the owner is gone
    assert processes.owner_state({**mine, processes.STARTED_TAG: "1"}) == "dead"
    assert processes.owner_state({**mine, processes.HOST_TAG: "elsewhere"}) == "unknown"
    assert processes.owner_state({}) == "unknown"


def test_a_fault_point_kills_only_when_named():
    code = "from pipeline.glue.processes import fault_point; fault_point('s:p'); print('on')"
    env = dict(os.environ)
    env.pop(processes.FAULT_VARIABLE, None)
    passed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert passed.returncode == 0 and passed.stdout.strip() == "on"
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, processes.FAULT_VARIABLE: "s:p"}, timeout=60)
    assert killed.returncode == -signal.SIGKILL and "on" not in killed.stdout
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, processes.FAULT_VARIABLE: "s:q"}, timeout=60)
    assert other.returncode == 0


def test_temp_files_carry_their_pid_and_dead_writers_temps_are_removed(tmp_path):
    with atomic_paths(tmp_path / "model.keras") as (temp,):
        match = TEMP_NAME.match(temp.name)
        assert match and int(match["pid"]) == os.getpid()
        temp.write_bytes(b"x")
    dead = tmp_path / f".model.{_dead_pid()}.abcd_123.tmp.keras"
    live = tmp_path / f".model.{os.getpid()}.efgh_456.tmp.keras"
    nested = tmp_path / "plots" / f".gallery.{_dead_pid()}.ijkl_789.tmp.png"
    nested.parent.mkdir()
    unrelated = tmp_path / ".keep"
    for path in (dead, live, nested, unrelated):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [dead]
    assert remove_stale_temps(tmp_path, recursive=True) == [nested]
    assert live.exists() and unrelated.exists() and (tmp_path / "model.keras").exists()


STAGE_THAT_WAITS = """
import time
from pathlib import Path
from pipeline.glue.files import atomic_paths, run_stage

def main():
    with atomic_paths(Path("out.bin")) as (temp,):
        temp.write_bytes(b"half")
        print("writing", flush=True)
        time.sleep(60)

run_stage(main)
"""


def test_sigterm_ends_a_stage_through_its_cleanup(tmp_path):
    stage = subprocess.Popen([sys.executable, "-c", STAGE_THAT_WAITS], cwd=tmp_path,
                             stdout=subprocess.PIPE, text=True)
    assert stage.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.glob(".out.*")]  # the temp file is there
    stage.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temp file


def test_the_launcher_is_found_through_the_shells_in_between():
    ask = [sys.executable, "-c",
           "from pipeline.glue.processes import launcher_pid; print(launcher_pid())"]
    direct = subprocess.run(ask, capture_output=True, text=True, check=True)
    # dash and bash, each told to run more than one command, stay in between
    nested = subprocess.run(
        ["dash", "-c", "bash -c " + shlex.quote(shlex.join(ask) + "; true") + "; true"],
        capture_output=True, text=True, check=True)
    assert int(direct.stdout) == int(nested.stdout) == os.getpid()


@pytest.mark.parametrize("through_shell", [False, True], ids=["direct", "through-dash"])
def test_under_dvc_a_stage_dies_with_its_parent(tmp_path, through_shell):
    # a stand-in for `dvc`: a parent that starts the stage and is then killed with SIGKILL.
    # DVC runs `$SHELL -c CMD` (/bin/sh without $SHELL); bash execs CMD, dash stays in
    # between, so the stage's parent is then the shell, which outlives the killed `dvc`
    stage_command = [sys.executable, "-c", STAGE_THAT_WAITS]
    if through_shell:
        stage_command = ["dash", "-c", shlex.join(stage_command) + "; true"]
    parent_code = ("import subprocess, sys, time; "
                   f"p = subprocess.Popen({stage_command!r}); "
                   "print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=tmp_path,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "DVC_STAGE": "train_estimator"})
    launched_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    stage_pid = _stage_pid(launched_pid) if through_shell else launched_pid
    parent.kill()
    parent.wait()
    while processes.pid_alive(stage_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes.pid_alive(stage_pid)  # exited (a zombie until init reaps it)
    assert list(tmp_path.iterdir()) == []

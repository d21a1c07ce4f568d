"""Files: params.yaml, atomic writes (no half-written output, ever), clean failures.

Temporary files are named ``.<stem>.<pid>.<random>.tmp<suffix>`` next to their target, so
those of a killed process are recognised (their PID is gone) and removed on the next start.

Used by the stages (``pipeline/stages/``), ``occmap``, ``bench`` and ``report``;
``pipeline.core`` never touches files.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import yaml

PARAMS_FILE = "params.yaml"
# .<stem>.<pid>.<8 random characters from mkstemp>.tmp<suffix>
TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(\.[^/]*)?$")


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """The whole params.yaml as a dict; a clear error if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    return params


@contextlib.contextmanager
def atomic_paths(*targets: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths next to ``targets``; rename them all onto the targets only
    when the block succeeds, else delete them, so no half-written output is ever left."""
    finals = [Path(t) for t in targets]
    temps = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(final.parent)
            # keep the suffix: some writers (keras.Model.save) insist on it
            fd, name = tempfile.mkstemp(prefix=f".{final.stem}.{os.getpid()}.",
                                        suffix=f".tmp{final.suffix}", dir=final.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        umask = _umask()
        for temp, final in zip(temps, finals, strict=True):
            if temp.is_file():  # mkstemp makes 0600 files; outputs get the usual mode
                os.chmod(temp, 0o666 & ~umask)
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``target`` (named as ``atomic_paths``'
    files, so ``remove_stale_temps`` finds it after a kill); when the block succeeds it
    replaces ``target`` whole, else it is deleted and ``target`` stays as it was."""
    import shutil

    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)
    temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp",
                                 dir=final.parent))
    try:
        yield temp
        os.chmod(temp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def remove_stale_temps(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the temporary files and folders of ``atomic_paths`` / ``atomic_folder`` in
    ``directory`` (and below, with ``recursive``) whose process is gone: what a killed
    writer left. Returns them."""
    import shutil

    from pipeline.glue.processes import pid_alive

    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.rglob(".*") if recursive else directory.glob(".*"):
        match = TEMP_NAME.match(path.name)
        if match and not pid_alive(int(match["pid"])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file():
                path.unlink(missing_ok=True)
            else:
                continue
            removed.append(path)
    return removed


def save_npz(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` uncompressed to an already-open temp path (no pickled objects)."""
    with open(file, "wb") as handle:
        np.savez(handle, **arrays)


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of the file at ``path``; a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the stage that makes it first)")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, payload: dict) -> None:
    """Atomically write ``payload`` as indented JSON."""
    with atomic_paths(path) as (temp,):
        temp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_csv(file: Path, header: list[str], rows) -> None:
    """Write ``header`` and ``rows`` to an already-chosen (temporary) path."""
    with open(file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; expected failures print one clear line and exit 1.

    Before it: SIGTERM (and, under DVC, the death of the ``dvc`` process) ends the stage
    through its context managers (``processes.guard_stage_process``), and the temporary
    files a killed run left in the output folders of params.yaml ``paths`` are removed.
    """
    from pipeline.glue.processes import guard_stage_process

    # TensorFlow's C++ start-up chatter (CPU features, oneDNN) buries the stage's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    guard_stage_process()
    try:
        _sweep_output_folders()
        main()
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def _sweep_output_folders() -> None:
    """Remove dead writers' temporary files under every ``paths`` folder of params.yaml."""
    from pipeline.core.params import PathsParams

    if not Path(PARAMS_FILE).is_file():
        return
    paths = PathsParams.from_dict(load_params().get("paths", {}))
    for folder in dict.fromkeys(paths.__dict__.values()):
        for path in remove_stale_temps(folder, recursive=True):
            print(f"removed {path}: a temporary file left by a killed run", file=sys.stderr)

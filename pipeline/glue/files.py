"""Files: params.yaml, atomic writes (no half-written output, ever), clean failures.

Used by the stages (``pipeline/stages/``), ``occmap``, ``bench`` and ``report``;
``pipeline.core`` never touches files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import yaml

PARAMS_FILE = "params.yaml"


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
            # keep the suffix: some writers (keras.Model.save) insist on it
            fd, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}",
                                        dir=final.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        umask = os.umask(0)
        os.umask(umask)
        for temp, final in zip(temps, finals, strict=True):
            if temp.is_file():  # mkstemp makes 0600 files; outputs get the usual mode
                os.chmod(temp, 0o666 & ~umask)
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def save_npz(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` uncompressed to an already-open temp path (no pickled objects)."""
    with open(file, "wb") as handle:
        np.savez(handle, **arrays)


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
    """Run a stage's ``main``; expected failures print one clear line and exit 1."""
    # TensorFlow's C++ start-up chatter (CPU features, oneDNN) buries the stage's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        main()
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None

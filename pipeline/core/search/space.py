"""Hyperparameter search spaces, for Optuna: parsed from params.yaml, suggested, applied.

The spaces come from params.yaml (``tune.<target>.space``); the model builders never see
Optuna: a trial's suggestions become an ordinary params section (``apply``), checked by the
same dataclass as a hand-written one.

A space maps a name to one of
- ``{low: a, high: b}``: a float, or an int when both bounds are ints; ``log: true`` for a
  log scale, ``step: s`` for a grid;
- ``{choices: [...]}``: categorical.
Names that are fields of the section (``learning_rate``, ``batch_size``, ``optimizer``, ...)
set those; any other name is a builder keyword and goes to the section's ``hparams``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import optuna


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(
            isinstance(v, int) and not isinstance(v, bool)
            for v in (self.low, self.high) if v is not None) and not isinstance(self.step, float)


def parse_space(raw: Mapping, section: str) -> list[Dimension]:
    """``tune.<section>.space`` -> dimensions; ``ValueError`` naming the key when a range or
    a choice list is malformed."""
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"tune.{section}.space must be a non-empty mapping of names to "
                         "ranges or choices")
    dimensions = []
    for name, spec in raw.items():
        where = f"tune.{section}.space.{name}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: expected {{low, high[, log, step]}} or {{choices}}, "
                             f"got {spec!r}")
        unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}")
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
                raise ValueError(f"{where}: choices must be a non-empty list, alone")
            dimensions.append(Dimension(name, choices=tuple(choices)))
            continue
        if "low" not in spec or "high" not in spec:
            raise ValueError(f"{where}: a range needs both low and high")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ValueError(f"{where}: low and high must be numbers, got {low!r}, {high!r}")
        if not low < high:
            raise ValueError(f"{where}: low {low} must be below high {high}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ValueError(f"{where}: a log scale needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None and (log or step <= 0):
            raise ValueError(f"{where}: step must be > 0 and cannot go with log")
        dimensions.append(Dimension(name, low, high, log, step))
    return dimensions


def suggest(trial: optuna.Trial, space: Iterable[Dimension]) -> dict:
    """The trial's value for every dimension, {name: value}."""
    values = {}
    for dim in space:
        if dim.choices is not None:
            values[dim.name] = trial.suggest_categorical(dim.name, list(dim.choices))
        elif dim.is_int:
            values[dim.name] = trial.suggest_int(dim.name, dim.low, dim.high, log=dim.log,
                                                 step=dim.step or 1)
        else:
            values[dim.name] = trial.suggest_float(dim.name, float(dim.low), float(dim.high),
                                                   log=dim.log, step=dim.step)
    return values


def apply(base: Mapping, values: Mapping, fields: Iterable[str]) -> dict:
    """``base`` (a params section) with ``values`` set: names in ``fields`` replace the
    section's own keys, the others go into its ``hparams`` (builder keywords)."""
    fields = set(fields)
    section = {key: value for key, value in base.items()}
    hparams = dict(section.get("hparams") or {})
    for name, value in values.items():
        if name in fields and name != "hparams":
            section[name] = value
        else:
            hparams[name] = value
    section["hparams"] = hparams
    return section


def overrides(values: Mapping, fields: Iterable[str], section: str) -> dict[str, object]:
    """``values`` as ``dvc exp run -S`` keys, ``{"classifier.learning_rate": 0.01,
    "++classifier.hparams.filters": 16}``: builder keywords take Hydra's ``++`` (add or
    override), since ``hparams`` is often empty and a plain key must already exist."""
    fields = set(fields)
    return {(f"{section}.{name}" if name in fields else f"++{section}.hparams.{name}"): value
            for name, value in values.items()}

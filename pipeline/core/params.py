"""params.yaml sections as frozen dataclasses, and the one parser that fills them.

Core code never reads YAML: a stage loads params.yaml (``load_params``, stage glue) and
passes the section's plain dict to ``from_dict`` here, which checks names and values and
raises ``ValueError`` naming the offending key.

Each section is a frozen dataclass; ``parse_section`` reads it from its fields alone:
- the YAML key is the field's name, or ``param(key="synthetic.n")`` for a nested one;
- the value is coerced by the field's annotation (``int``, ``float``, ``str``, ``bool``
  (strictly true/false), ``int | str`` (digits -> int, else str), ``tuple[T, ...]``, ``dict``, or
  another section dataclass);
- an absent key, or one left empty (null), takes the field's default, unless the field
  is ``param(required=True)`` or has no default;
- ``param(choices=..., at_least=..., above=..., below=...)`` declare the value checks;
  ``_check`` holds whatever a class needs beyond them.
Building a dataclass directly checks nothing: only ``from_dict`` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

S = TypeVar("S")


def param(default: Any = dataclasses.MISSING, *, key: str | None = None,
          required: bool = False, choices: tuple | None = None,
          at_least: float | None = None, above: float | None = None,
          below: float | None = None) -> Any:
    """A dataclass field with its YAML ``key`` (dotted when nested) and value checks
    (``choices`` applies to each item of a tuple; ``above``/``below`` are exclusive)."""
    meta = {name: value for name, value in (("key", key), ("choices", choices),
                                            ("at_least", at_least), ("above", above),
                                            ("below", below)) if value is not None}
    if required:
        meta["required"] = True
    if isinstance(default, dict):  # a mutable default: a fresh copy per instance
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Section:
    """Base of the section dataclasses: ``from_dict`` reads section ``SECTION``."""

    SECTION = ""

    @classmethod
    def from_dict(cls: type[S], raw: Any) -> S:
        return parse_section(cls, raw, cls.SECTION)

    def _check(self, section: str) -> None:
        """Checks beyond those ``param`` declares (none by default)."""


def parse_section(cls: type[S], raw: Any, section: str, base: S | None = None) -> S:
    """The dataclass ``cls`` from the params section ``raw`` (named ``section`` in errors);
    defaults come from ``base``'s values where given, else from the dataclass."""
    fields = dataclasses.fields(cls)
    keys = {f.name: f.metadata.get("key", f.name) for f in fields}
    given = _flatten(raw, section, list(keys.values()))
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields:
        key, value = keys[f.name], given.get(keys[f.name])
        if base is not None:
            default = getattr(base, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if value is None:
            if f.metadata.get("required") or default is dataclasses.MISSING:
                raise ValueError(f"params section {section!r} lacks the key {key!r}")
            values[f.name] = default
            continue
        value = _coerce(hints[f.name], value, f"{section}.{key}", default)
        _check_value(value, f"{section}.{key}", f.metadata)
        values[f.name] = value
    params = cls(**values)
    params._check(section)
    return params


def _flatten(raw: Any, section: str, keys: list[str]) -> dict[str, Any]:
    """``raw`` checked against the dotted ``keys`` it may hold, as {dotted key: value};
    an empty (null) nested block counts as an empty mapping."""
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"params section {section!r} must be a mapping, got {type(raw).__name__}")
    allowed = {key.split(".")[0] for key in keys}
    unknown = sorted(str(name) for name in set(raw) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in params section {section!r}; "
                         f"allowed: {sorted(allowed)}")
    flat = {}
    for name, value in raw.items():
        inner = [key.split(".", 1)[1] for key in keys if key.startswith(f"{name}.")]
        if not inner:
            flat[name] = value
            continue
        nested = _flatten({} if value is None else value, f"{section}.{name}", inner)
        flat.update({f"{name}.{key}": item for key, item in nested.items()})
    return flat


def _coerce(hint: Any, value: Any, key: str, default: Any) -> Any:
    """``value`` as the annotation ``hint`` says, or ``ValueError`` naming ``key``."""
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key, base=default)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        # int | str: an integer, or a string of digits, is an integer; any other string
        # stays a string (a channel given by index or by name)
        for option in typing.get_args(hint):
            if option is int and (isinstance(value, numbers.Integral)
                                  and not isinstance(value, bool)
                                  or isinstance(value, str) and value.strip().isdigit()):
                return int(value)
            if option is str and isinstance(value, str):
                return value
        names = " or ".join(getattr(option, "__name__", str(option))
                            for option in typing.get_args(hint))
        raise ValueError(f"{key} must be {names}, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]", None) for i, v in enumerate(value))
    if hint is dict or typing.get_origin(hint) is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint in (int, float, str) and (isinstance(value, str) or number):
        with contextlib.suppress(ValueError):  # e.g. int("3.5"): the error below
            if hint is not int:
                return hint(value)
            if isinstance(value, numbers.Integral) or float(value).is_integer():
                return int(value)
    what = {int: "an integer", float: "a number", str: "a string"}.get(hint)
    if what is None:
        raise TypeError(f"{key}: no coercion to {hint!r}")
    raise ValueError(f"{key} must be {what}, got {value!r}")


def _check_value(value: Any, key: str, meta: Mapping) -> None:
    """The checks ``param`` declared in ``meta`` on the coerced ``value``."""
    if "choices" in meta:
        items = enumerate(value) if isinstance(value, tuple) else [(None, value)]
        for i, item in items:
            if item not in meta["choices"]:
                name = key if i is None else f"{key}[{i}]"
                raise ValueError(f"{name} must be one of {meta['choices']}, got {item!r}")
    if "at_least" in meta and value < meta["at_least"]:
        raise ValueError(f"{key} must be >= {meta['at_least']}, got {value}")
    low, high = meta.get("above"), meta.get("below")
    if (low is not None and value <= low) or (high is not None and value >= high):
        bounds = (f"in ({low}, {high})" if low is not None and high is not None
                  else f"> {low}" if low is not None else f"< {high}")
        raise ValueError(f"{key} must be {bounds}, got {value}")


@dataclass(frozen=True)
class PathsParams(Section):
    """Where every stage reads and writes, relative to the project root."""

    SECTION = "paths"

    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    occlusion_dir: str = "data/occlusion"
    models_dir: str = "models"
    metrics_dir: str = "metrics"
    plots_dir: str = "plots"


@dataclass(frozen=True)
class DataParams(Section):
    """The ``data`` section: where the stamps come from and how they are split."""

    SECTION = "data"
    SOURCES = ("synthetic", "hits")
    SYNTHETIC_CHANNELS = ("template", "science", "difference", "snr_difference")

    # "synthetic" (the twin) or "hits" (the real pickle)
    source: str = param("synthetic", required=True, choices=SOURCES)
    seed: int = 42
    hits_path: str = param("data/raw/HiTS2013_100k_samples(4_channels)_images_labels.pkl",
                           key="hits.path")
    synthetic_n: int = param(100_000, key="synthetic.n", at_least=1)
    synthetic_preset: str = param("default", key="synthetic.preset")
    synthetic_overrides: dict = param({}, key="synthetic.overrides")
    synthetic_stamp_size: int = param(21, key="synthetic.stamp_size")  # odd, >= 11
    synthetic_channels: tuple[str, ...] = param(SYNTHETIC_CHANNELS, key="synthetic.channels",
                                                choices=SYNTHETIC_CHANNELS)
    test_fraction: float = param(0.25, key="split.test_fraction", above=0, below=1)
    # of what remains after the test split
    val_fraction: float = param(0.25, key="split.val_fraction", above=0, below=1)

    def _check(self, section: str) -> None:
        size, channels = self.synthetic_stamp_size, self.synthetic_channels
        if size < 11 or size % 2 == 0:
            raise ValueError(f"{section}.synthetic.stamp_size must be an odd integer >= 11, "
                             f"got {size}")
        if not channels or len(set(channels)) < len(channels):
            raise ValueError(f"{section}.synthetic.channels must name at least one channel, "
                             f"each once, got {list(channels)}")


@dataclass(frozen=True)
class ClassifierParams(Section):
    """The ``classifier`` section: which net, on which channels, trained how."""

    SECTION = "classifier"
    SOURCES = ("train", "file")
    OUTPUTS = ("softmax", "sigmoid")

    # train: build and fit ``arch``; file: import the model file below instead
    source: str = param("train", choices=SOURCES)
    arch: str = "seed"  # seed | deephits (source train)
    # stamp channels the net sees, in its input order (indices or names)
    channels: tuple[int | str, ...] = (3,)
    # source file: a .keras, a Keras 2 .h5 or a SavedModel directory
    file_path: str = param("", key="file.path")
    file_pad: int = param(0, key="file.pad", at_least=0)  # zero pixels added per side
    file_crop: int = param(0, key="file.crop", at_least=0)  # pixels cut per side
    file_real_index: int = param(1, key="file.real_index", choices=(0, 1))
    file_output: str = param("softmax", key="file.output", choices=OUTPUTS)
    optimizer: str = "sgd"
    learning_rate: float = param(0.01, above=0)
    batch_size: int = param(64, at_least=1)
    epochs: int = param(100, at_least=1)
    patience: int = param(5, at_least=0)
    seed: int = 42
    hparams: dict = param({})  # builder keywords

    def _check(self, section: str) -> None:
        if self.source == "file" and not self.file_path:
            raise ValueError(f"{section}.file.path must name the model file when "
                             f"{section}.source is file")
        if self.file_pad and self.file_crop:
            raise ValueError(f"{section}.file.pad and {section}.file.crop: at most one of "
                             f"them may be non-zero, got {self.file_pad} and {self.file_crop}")


@dataclass(frozen=True)
class OcclusionParams(Section):
    """The ``occlusion`` section: how exact maps are computed (see core/occlusion.py)."""

    SECTION = "occlusion"
    TARGETS = ("predicted", "label")
    ENGINES = ("auto", "batched", "incremental")

    patch: int = 3
    stride: int = 1
    fill: float = 0.0
    padding: str = "same"  # same | valid
    reduce: str = "mean"  # mean | sum
    target: str = param("predicted", choices=TARGETS)  # predicted | label
    # stamps per classifier batch (chunk_size * 441 images)
    chunk_size: int = param(4, at_least=1)
    # batched: every occluded copy through the whole net; incremental: only what each
    # patch changes (core/incremental.py; refused for a net it cannot run); auto:
    # incremental where the net allows it, else batched with a log line saying why
    engine: str = param("auto", choices=ENGINES)
    # where the maps are computed: "" in this process, or a Spark master URL
    # (local[2], spark://HOST:PORT): the same engine in each executor, the same maps
    spark_master: str = ""


@dataclass(frozen=True)
class EstimatorParams(Section):
    """The ``estimator`` section: the one-pass map estimator and its training
    (see core/models/estimators.py)."""

    SECTION = "estimator"
    ARCHS = ("seed_ae", "unet", "gated_ae", "headroom_ae", "tap_ae")
    CONDITIONS = ("class", "margin", "features", "taps")

    arch: str = param("gated_ae", choices=ARCHS)
    condition: str = param("features", choices=CONDITIONS)
    optimizer: str = "adam"
    learning_rate: float = param(0.001, above=0)
    batch_size: int = param(128, at_least=1)
    epochs: int = param(30, at_least=1)
    patience: int = param(4, at_least=0)
    # weight of the amplitude-relative loss term
    shape_weight: float = param(0.1, at_least=0)
    # use at most this many training maps (0: all)
    train_limit: int = param(0, at_least=0)
    seed: int = 42
    copy_weights: bool = True
    freeze_encoder: bool = True
    # train also on each map's three quarter turns where they are exact maps too (a
    # classifier invariant to quarter turns, a symmetric patch grid): 4x data for free
    quarter_turns: bool = True
    # train the doubt head (core/models/doubt.py) on the validation maps and serve its
    # doubt per map beside the maps
    doubt: bool = True
    doubt_epochs: int = param(30, at_least=1)  # upper bound; it early-stops
    hparams: dict = param({})  # builder keywords


@dataclass(frozen=True)
class EvaluateParams(Section):
    """The ``evaluate`` section: how many test stamps the costlier checks use."""

    SECTION = "evaluate"

    # stamps whose deletion curves are computed (0: all)
    faithfulness_n: int = param(5000, at_least=0)
    # re-classifications per curve, after the unmasked one
    deletion_steps: int = param(21, at_least=1)
    # stamps mapped under the re-randomised classifier
    sanity_n: int = param(200, at_least=0)
    # stamps both the exact engine and the estimator map, timed
    speed_n: int = param(1024, at_least=1)
    # the selective operating point: the share of maps of highest doubt recomputed exactly
    exact_share: float = param(0.05, at_least=0)
    seed: int = 0

    def _check(self, section: str) -> None:
        if self.exact_share > 1:
            raise ValueError(f"{section}.exact_share must lie in [0, 1], got "
                             f"{self.exact_share}")


@dataclass(frozen=True)
class TuneTarget(Section):
    """``tune.classifier`` / ``tune.estimator``: one Optuna study and its trial budget
    (parsed as a field of ``TuneParams``, which names the section)."""

    FIDELITIES = ("mse_skill_overall", "bogus_median_r")

    study: str
    # finished trials (complete or pruned) over all workers
    n_trials: int = param(20, at_least=1)
    epochs: int = param(10, at_least=1)  # per trial (early stopping may end sooner)
    train_limit: int = param(20_000, at_least=0)  # training stamps per trial (0: all)
    val_limit: int = param(0, at_least=0)  # validation stamps per trial (0: all)
    enqueue_defaults: bool = True  # trial 0 = the section's current values: the baseline
    space: dict = param({})
    # classifier study: median pruning on val_accuracy
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 2
    # estimator study: objectives (fidelity, maps/s) and the pick on the Pareto front
    # mse_skill_overall or bogus_median_r (non-trivial bogus maps)
    fidelity: str = param("mse_skill_overall", choices=FIDELITIES)
    fidelity_floor: float = 0.9
    speed_batch: int = param(2048, at_least=1)  # stamps timed per trial (val stamps)


@dataclass(frozen=True)
class TuneParams(Section):
    """The ``tune`` section: where studies live and what each searches."""

    SECTION = "tune"

    storage: str = ""  # "" -> the journal file below; else an Optuna storage URL
    journal: str = "tuning/optuna-journal.log"
    seed: int = 42
    workers: int = param(1, at_least=1)
    # database storages (e.g. PostgreSQL, several machines): a worker's trials beat every
    # heartbeat_interval s; one silent for grace_period s is failed and retried max_retry
    # times (the journal on one machine tells a killed worker by its PID instead)
    heartbeat_interval: int = param(10, at_least=1)
    grace_period: int = param(60, at_least=1)
    max_retry: int = param(1, at_least=0)
    classifier: TuneTarget = TuneTarget("classifier")
    estimator: TuneTarget = TuneTarget("estimator")

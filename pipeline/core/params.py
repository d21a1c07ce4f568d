"""params.yaml sections as frozen dataclasses.

Core code never reads YAML: a stage loads params.yaml (``pipeline.io.load_params``) and
passes the section's plain dict to ``from_dict`` here, which checks names and values and
raises ``ValueError`` naming the offending key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def _check_keys(section: str, given: dict, allowed: set[str]) -> None:
    if not isinstance(given, dict):
        raise ValueError(
            f"params section {section!r} must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in params section {section!r}; "
                         f"allowed: {sorted(allowed)}")


def _require(section: str, given: dict, key: str) -> Any:
    if key not in given:
        raise ValueError(f"params section {section!r} lacks the key {key!r}")
    return given[key]


@dataclass(frozen=True)
class PathsParams:
    """Where every stage reads and writes, relative to the project root."""

    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    occlusion_dir: str = "data/occlusion"
    models_dir: str = "models"
    metrics_dir: str = "metrics"
    plots_dir: str = "plots"

    @classmethod
    def from_dict(cls, raw: dict) -> PathsParams:
        fields = {f.name for f in dataclasses.fields(cls)}
        _check_keys("paths", raw, fields)
        return cls(**{k: str(v) for k, v in raw.items()})


@dataclass(frozen=True)
class DataParams:
    """The ``data`` section: where the stamps come from and how they are split."""

    source: str = "synthetic"  # "synthetic" (the twin) or "hits" (the real pickle)
    seed: int = 42
    hits_path: str = "data/raw/HiTS2013_100k_samples(4_channels)_images_labels.pkl"
    synthetic_n: int = 100_000
    synthetic_preset: str = "default"
    synthetic_overrides: dict = dataclasses.field(default_factory=dict)
    test_fraction: float = 0.25
    val_fraction: float = 0.25  # of what remains after the test split

    SOURCES = ("synthetic", "hits")

    @classmethod
    def from_dict(cls, raw: dict) -> DataParams:
        _check_keys("data", raw, {"source", "seed", "hits", "synthetic", "split"})
        hits = raw.get("hits", {}) or {}
        synthetic = raw.get("synthetic", {}) or {}
        split = raw.get("split", {}) or {}
        _check_keys("data.hits", hits, {"path"})
        _check_keys("data.synthetic", synthetic, {"n", "preset", "overrides"})
        _check_keys("data.split", split, {"test_fraction", "val_fraction"})
        params = cls(
            source=str(_require("data", raw, "source")),
            seed=int(raw.get("seed", cls.seed)),
            hits_path=str(hits.get("path", cls.hits_path)),
            synthetic_n=int(synthetic.get("n", cls.synthetic_n)),
            synthetic_preset=str(synthetic.get("preset", cls.synthetic_preset)),
            synthetic_overrides=dict(synthetic.get("overrides", {}) or {}),
            test_fraction=float(split.get("test_fraction", cls.test_fraction)),
            val_fraction=float(split.get("val_fraction", cls.val_fraction)),
        )
        if params.source not in cls.SOURCES:
            raise ValueError(f"data.source must be one of {cls.SOURCES}, got {params.source!r}")
        if params.synthetic_n < 1:
            raise ValueError(f"data.synthetic.n must be >= 1, got {params.synthetic_n}")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(params, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"data.split.{name} must be in (0, 1), got {value}")
        return params


@dataclass(frozen=True)
class ClassifierParams:
    """The ``classifier`` section: which net, on which channels, trained how."""

    arch: str = "seed"  # seed | deephits
    channels: tuple[int, ...] = (3,)
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    batch_size: int = 64
    epochs: int = 100
    patience: int = 5
    seed: int = 42
    hparams: dict = dataclasses.field(default_factory=dict)  # builder keywords

    @classmethod
    def from_dict(cls, raw: dict) -> ClassifierParams:
        fields = {f.name for f in dataclasses.fields(cls)}
        _check_keys("classifier", raw, fields)
        defaults = cls()
        params = cls(
            arch=str(raw.get("arch", defaults.arch)),
            channels=tuple(int(c) for c in raw.get("channels", defaults.channels)),
            optimizer=str(raw.get("optimizer", defaults.optimizer)),
            learning_rate=float(raw.get("learning_rate", defaults.learning_rate)),
            batch_size=int(raw.get("batch_size", defaults.batch_size)),
            epochs=int(raw.get("epochs", defaults.epochs)),
            patience=int(raw.get("patience", defaults.patience)),
            seed=int(raw.get("seed", defaults.seed)),
            hparams=dict(raw.get("hparams", {}) or {}),
        )
        for name in ("batch_size", "epochs"):
            if getattr(params, name) < 1:
                raise ValueError(f"classifier.{name} must be >= 1, got {getattr(params, name)}")
        if params.learning_rate <= 0:
            raise ValueError(f"classifier.learning_rate must be > 0, got {params.learning_rate}")
        if params.patience < 0:
            raise ValueError(f"classifier.patience must be >= 0, got {params.patience}")
        return params


@dataclass(frozen=True)
class OcclusionParams:
    """The ``occlusion`` section: how exact maps are computed (see core/occlusion.py)."""

    patch: int = 3
    stride: int = 1
    fill: float = 0.0
    padding: str = "same"  # same | valid
    reduce: str = "mean"  # mean | sum
    target: str = "predicted"  # predicted | label
    chunk_size: int = 4  # stamps per classifier batch (chunk_size * 441 images)

    TARGETS = ("predicted", "label")

    @classmethod
    def from_dict(cls, raw: dict) -> OcclusionParams:
        fields = {f.name for f in dataclasses.fields(cls)}
        _check_keys("occlusion", raw, fields)
        defaults = cls()
        params = cls(**{name: type(getattr(defaults, name))(raw.get(name, getattr(defaults, name)))
                        for name in fields})
        if params.target not in cls.TARGETS:
            raise ValueError(f"occlusion.target must be one of {cls.TARGETS}, "
                             f"got {params.target!r}")
        if params.chunk_size < 1:
            raise ValueError(f"occlusion.chunk_size must be >= 1, got {params.chunk_size}")
        return params


@dataclass(frozen=True)
class EstimatorParams:
    """The ``estimator`` section: the one-pass map estimator and its training
    (see core/models/estimators.py)."""

    arch: str = "gated_ae"  # seed_ae | unet | gated_ae | headroom_ae | tap_ae
    condition: str = "features"  # class | margin | features | taps
    optimizer: str = "adam"
    learning_rate: float = 0.001
    batch_size: int = 128
    epochs: int = 30
    patience: int = 4
    shape_weight: float = 0.1  # weight of the amplitude-relative loss term
    train_limit: int = 0  # use at most this many training maps (0: all)
    seed: int = 42
    copy_weights: bool = True
    freeze_encoder: bool = True
    # train also on each map's three quarter turns where they are exact maps too (a
    # classifier invariant to quarter turns, a symmetric patch grid): 4x data for free
    quarter_turns: bool = True
    hparams: dict = dataclasses.field(default_factory=dict)  # builder keywords

    ARCHS = ("seed_ae", "unet", "gated_ae", "headroom_ae", "tap_ae")
    CONDITIONS = ("class", "margin", "features", "taps")

    @classmethod
    def from_dict(cls, raw: dict) -> EstimatorParams:
        fields = {f.name for f in dataclasses.fields(cls)}
        _check_keys("estimator", raw, fields)
        defaults = cls()
        values = {}
        for name in fields - {"hparams"}:
            value = raw.get(name, getattr(defaults, name))
            kind = type(getattr(defaults, name))
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"estimator.{name} must be true or false, got {value!r}")
            values[name] = kind(value)
        params = cls(**values, hparams=dict(raw.get("hparams", {}) or {}))
        if params.arch not in cls.ARCHS:
            raise ValueError(f"estimator.arch must be one of {cls.ARCHS}, got {params.arch!r}")
        if params.condition not in cls.CONDITIONS:
            raise ValueError(f"estimator.condition must be one of {cls.CONDITIONS}, "
                             f"got {params.condition!r}")
        for name in ("batch_size", "epochs"):
            if getattr(params, name) < 1:
                raise ValueError(f"estimator.{name} must be >= 1, got {getattr(params, name)}")
        if params.learning_rate <= 0 or params.shape_weight < 0 or params.train_limit < 0:
            raise ValueError("estimator.learning_rate must be > 0, shape_weight and "
                             "train_limit >= 0")
        if params.patience < 0:
            raise ValueError(f"estimator.patience must be >= 0, got {params.patience}")
        return params


@dataclass(frozen=True)
class EvaluateParams:
    """The ``evaluate`` section: how many test stamps the costlier checks use."""

    faithfulness_n: int = 5000  # stamps whose deletion curves are computed (0: all)
    deletion_steps: int = 21  # re-classifications per curve, after the unmasked one
    sanity_n: int = 200  # stamps mapped under the re-randomised classifier
    speed_n: int = 1024  # stamps both the exact engine and the estimator map, timed
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict) -> EvaluateParams:
        fields = {f.name for f in dataclasses.fields(cls)}
        _check_keys("evaluate", raw, fields)
        params = cls(**{name: int(raw.get(name, getattr(cls(), name))) for name in fields})
        for name in ("faithfulness_n", "sanity_n"):
            if getattr(params, name) < 0:
                raise ValueError(f"evaluate.{name} must be >= 0, got {getattr(params, name)}")
        if params.deletion_steps < 1 or params.speed_n < 1:
            raise ValueError("evaluate.deletion_steps and evaluate.speed_n must be >= 1")
        return params


@dataclass(frozen=True)
class TuneTarget:
    """``tune.classifier`` / ``tune.estimator``: one Optuna study and its trial budget."""

    study: str
    n_trials: int = 20  # finished trials (complete or pruned) over all workers
    epochs: int = 10  # per trial (early stopping may end sooner)
    train_limit: int = 20_000  # training stamps per trial (0: all)
    val_limit: int = 0  # validation stamps per trial (0: all)
    enqueue_defaults: bool = True  # trial 0 = the section's current values: the baseline
    space: dict = dataclasses.field(default_factory=dict)
    # classifier study: median pruning on val_accuracy
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 2
    # estimator study: objectives (fidelity, maps/s) and the pick on the Pareto front
    fidelity: str = "mse_skill_overall"  # or bogus_median_r (non-trivial bogus maps)
    fidelity_floor: float = 0.9
    speed_batch: int = 2048  # stamps timed per trial (val stamps)

    FIDELITIES = ("mse_skill_overall", "bogus_median_r")


@dataclass(frozen=True)
class TuneParams:
    """The ``tune`` section: where studies live and what each searches."""

    storage: str = ""  # "" -> the journal file below; else an Optuna storage URL
    journal: str = "tuning/optuna-journal.log"
    seed: int = 42
    workers: int = 1
    classifier: TuneTarget = TuneTarget("classifier")
    estimator: TuneTarget = TuneTarget("estimator")

    @classmethod
    def from_dict(cls, raw: dict) -> TuneParams:
        _check_keys("tune", raw, {f.name for f in dataclasses.fields(cls)})
        targets = {}
        for name in ("classifier", "estimator"):
            section = dict(raw.get(name, {}) or {})
            _check_keys(f"tune.{name}", section, {f.name for f in dataclasses.fields(TuneTarget)})
            defaults = TuneTarget(name)
            values = {}
            for field in dataclasses.fields(TuneTarget):
                value = section.get(field.name, getattr(defaults, field.name))
                kind = type(getattr(defaults, field.name))
                if kind is bool and not isinstance(value, bool):
                    raise ValueError(f"tune.{name}.{field.name} must be true or false, "
                                     f"got {value!r}")
                values[field.name] = dict(value or {}) if kind is dict else kind(value)
            target = TuneTarget(**values)
            if target.n_trials < 1 or target.epochs < 1 or target.speed_batch < 1:
                raise ValueError(f"tune.{name}: n_trials, epochs and speed_batch must be >= 1")
            if min(target.train_limit, target.val_limit) < 0:
                raise ValueError(f"tune.{name}: train_limit and val_limit must be >= 0")
            if target.fidelity not in TuneTarget.FIDELITIES:
                raise ValueError(f"tune.{name}.fidelity must be one of "
                                 f"{TuneTarget.FIDELITIES}, got {target.fidelity!r}")
            targets[name] = target
        params = cls(storage=str(raw.get("storage", "") or ""),
                     journal=str(raw.get("journal", cls.journal)),
                     seed=int(raw.get("seed", cls.seed)),
                     workers=int(raw.get("workers", cls.workers)), **targets)
        if params.workers < 1:
            raise ValueError(f"tune.workers must be >= 1, got {params.workers}")
        return params

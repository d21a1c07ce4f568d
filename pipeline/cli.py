"""``occmap``: explain HiTS stamps with occlusion maps, from the model registry.

    occmap explain STAMPS --out MAPS.npz [--exact] [--model champion|VERSION] [--png DIR]
    occmap explain STAMPS --out MAPS.npz --exact-share 0.05 | --max-doubt 0.1
    occmap explain STAMPS --out MAPS.npz --exact --classifier-file PATH [--channels 3]
                   [--pad 3] [--real-index 1] [--output softmax|sigmoid]
    occmap serve [--model champion|VERSION] [--port 5001] [--max-stamps 1000]
    occmap report STAMPS --out DIR [--model champion|VERSION] [--exact] [--limit 500]
    occmap alerts write STAMPS --out RAW [--files 3]        (Parquet alerts of twin stamps)
    occmap alerts explain RAW --out SCIENCE [--master local[2]]       (Spark batch job)
    occmap alerts stream RAW --out SCIENCE --checkpoint CK [--available-now]  (streaming)
    occmap store reroot | urls [--port 5000]

Thin glue: stamps are read and checked here, the maps come from the registered
``occlusion-estimator`` (one forward pass) or from the exact engine on the registered
``hits-classifier`` or a model file of the user's (441 classifications per stamp), with
the ``occlusion`` settings of the project's params.yaml; with ``--exact-share`` or
``--max-doubt`` the estimated maps of highest doubt are replaced by exact ones, computed
with the classifier version the estimator was trained for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import click
import numpy as np

from pipeline.glue.serving import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_STAMPS

ESTIMATOR_NAME = "occlusion-estimator"
CLASSIFIER_NAME = "hits-classifier"
ZIP_MAGIC = b"PK\x03\x04"


def read_stamps(path: Path, allow_out_of_range: bool = False) -> dict[str, np.ndarray]:
    """{"images": (N, H, W, C) float32, finite, in [0, 1] unless ``allow_out_of_range``
    [, "labels": (N,)][, "kind": (N,) str]} from an ``.npz`` with ``images`` (never
    unpickled) or a HiTS
    pickle (through the restricted unpickler); ``ValueError`` naming ``path`` and the
    problem otherwise. The shape is checked against the model's when the model is
    loaded."""
    from pipeline.core.data.hits import HitsDataError, load_hits_pickle
    from pipeline.core.explain import check_stamps

    with open(path, "rb") as handle:
        is_zip = handle.read(4) == ZIP_MAGIC
    if is_zip:
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "images" not in npz.files:
                    raise ValueError(f"{path}: no array 'images' in the .npz; found {npz.files}")
                arrays = {"images": npz["images"]}
                for optional in ("labels", "kind"):  # kind: the twin's kind of stamp
                    if optional in npz.files:
                        arrays[optional] = npz[optional]
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise ValueError(f"{path}: unreadable .npz, truncated or corrupt ({err})") from None
        except ValueError as err:  # object arrays refused by allow_pickle=False
            if str(err).startswith(str(path)):
                raise
            raise ValueError(f"{path}: unreadable .npz ({err})") from None
    else:
        try:
            images, labels = load_hits_pickle(path)
        except HitsDataError as err:
            raise ValueError(f"{err} (expected an .npz with 'images' or a HiTS pickle)") \
                from None
        arrays = {"images": images, "labels": labels}
    images = np.asarray(arrays["images"])
    if images.ndim != 4:
        raise ValueError(f"{path}: stamps must have shape (N, H, W, C), got {images.shape}")
    arrays["images"] = check_stamps(images, images.shape[1:], source=str(path),
                                    allow_out_of_range=allow_out_of_range)
    if len(arrays["images"]) == 0:
        raise ValueError(f"{path}: holds no stamps")
    return arrays


def model_uri(name: str, model: str) -> str:
    """``models:/name@alias`` for an alias, ``models:/name/version`` for a number."""
    return f"models:/{name}/{model}" if model.isdigit() else f"models:/{name}@{model}"


def estimated_maps(model: str, stamps: np.ndarray, batch_size: int, source: str,
                   allow_out_of_range: bool = False, spark_master: str | None = None,
                   ) -> tuple[dict[str, np.ndarray], object]:
    """(outputs, ``ModelVersion`` used) of version or alias ``model`` of the registered
    estimator, batch by batch with a bar (or, with ``spark_master``, by a Spark job):
    outputs {"maps": (N, H, W) float32, "target": (N,) int32, "base_prob": (N,)
    float32[, "doubt": (N,) float32]} (``pipeline.glue.pyfunc``); only the version's Keras
    file is read (no code from the store runs). ``ValueError`` naming ``source`` when the
    stamps are not of the model's shape or are refused, or when the version is
    incomplete."""
    from tqdm import tqdm

    from pipeline.core.explain import check_stamps
    from pipeline.glue.pyfunc import load_registered_explainer

    estimator, version = load_registered_explainer(ESTIMATOR_NAME, model)
    uri = f"models:/{ESTIMATOR_NAME}/{version.version}"
    if tuple(stamps.shape[1:]) != estimator.shape:
        raise ValueError(f"{source}: stamps of shape {stamps.shape[1:]}, the model {uri} "
                         f"explains stamps of shape {estimator.shape}")
    if spark_master is not None:
        from pipeline.glue.spark import explain_on_spark

        # refused here, with the message of one process, before any job starts
        check_stamps(stamps, estimator.shape, source=source,
                     allow_out_of_range=allow_out_of_range)
        return explain_on_spark(stamps, estimator.model, "estimate", spark_master,
                                allow_out_of_range=allow_out_of_range), version
    parts: dict[str, list] = {}
    with tqdm(total=len(stamps), unit="map", desc="estimated maps") as bar:
        for start in range(0, len(stamps), batch_size):
            stop = min(start + batch_size, len(stamps))
            outputs = estimator.explained(stamps[start:stop], allow_out_of_range, source)
            for name, value in outputs.items():
                parts.setdefault(name, []).append(value)
            bar.update(stop - start)
    return {name: np.concatenate(values) for name, values in parts.items()}, version


def with_exact_fallback(result: dict[str, np.ndarray], version, stamps: np.ndarray,
                        share: float | None, max_doubt: float | None, source: str,
                        spark_master: str | None = None,
                        ) -> tuple[dict[str, np.ndarray], str | None]:
    """``result`` (``estimated_maps``'s outputs, with "doubt") with the rows of highest
    doubt (the ``share`` of them, or those above ``max_doubt``) replaced by their exact
    maps, target and probability under the classifier version the estimator ``version``
    was trained for (its tag ``classifier_version``), with the project's occlusion
    settings: the engine and settings of ``occmap explain --exact``. Adds "exact" (N,)
    bool, the rows recomputed. Returns (result, the classifier's URI or None when no row
    was recomputed). ``ValueError`` naming ``source`` when the version has no doubt or
    names no classifier."""
    from pipeline.core.selective import rows_to_recompute

    uri = f"models:/{ESTIMATOR_NAME}/{version.version}"
    if "doubt" not in result:
        raise ValueError(f"{source}: {uri} gives no doubt per map (trained before the doubt "
                         "head, or with estimator.doubt false): retrain it, or use --exact")
    chosen = rows_to_recompute(result["doubt"], share=share, max_doubt=max_doubt)
    result = dict(result, exact=chosen)
    if not chosen.any():
        return result, None
    classifier_version = version.tags.get("classifier_version", "")
    if not classifier_version.isdigit():
        raise ValueError(f"{source}: {uri} does not record the classifier it was trained for "
                         "(tag classifier_version), so its maps cannot be recomputed exactly")
    classifier = registered_classifier(classifier_version, stamps, source)
    exact = exact_maps(classifier, stamps[chosen], occlusion_settings(), spark_master)
    for name in ("maps", "target", "base_prob"):
        result[name] = result[name].copy()
        result[name][chosen] = exact[name]
    return result, model_uri(CLASSIFIER_NAME, classifier_version)


def quiet_libraries(verbose: bool) -> None:
    """Unless ``verbose``: TensorFlow's C++ log below errors (its oneDNN and CPU feature
    lines), MLflow's and TensorFlow's Python loggers at errors only, and no Python
    warnings from them, so that stderr holds occmap's own lines and progress bars. Must
    run before TensorFlow is imported. Telemetry is off either way."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if verbose:
        return
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("mlflow", "tensorflow", "absl", "h5py", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("mlflow", "keras", "tensorflow", "absl"):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")


def project_folder() -> Path:
    """The project whose store occmap uses by default: the project folder it runs in,
    else (run from elsewhere) the project this package was installed from (an editable
    install), so that it never starts a new store where it happens to run."""
    from pipeline.glue import tracking

    here = tracking.project_root()
    installed_from = Path(__file__).resolve().parents[1]
    if not (here / "dvc.yaml").is_file() and (installed_from / "dvc.yaml").is_file():
        return installed_from
    return here


def default_store() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded store of ``project_folder()``."""
    from pipeline.glue import tracking

    return tracking.tracking_uri(project_folder())


def open_registry(uri: str, must_exist: bool = True) -> None:
    """Point MLflow at the store ``uri``; with ``must_exist`` (the registry is read) a
    store that is not there or does not answer is a ``ClickException`` first."""
    import mlflow

    from pipeline.glue import tracking

    if must_exist:
        try:
            tracking.check_store(uri, must_exist=True)
        except tracking.StoreUnavailable as err:
            raise click.ClickException(str(err)) from None
    if uri == tracking.default_tracking_uri(project_folder()):
        tracking.reroot_store(project_folder())  # the project may have been moved
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def registered_estimator(model: str, tracking_uri: str | None):
    """(estimator, its URI as asked, its pinned ``models:/name/N``) for version or alias
    ``model`` of the registered estimator in the store ``tracking_uri`` (default: the
    project's), loaded from its Keras file; a ``ClickException`` saying why otherwise."""
    from mlflow.exceptions import MlflowException

    from pipeline.glue.pyfunc import load_registered_explainer

    uri = tracking_uri or default_store()
    open_registry(uri)
    source = model_uri(ESTIMATOR_NAME, model)
    try:
        estimator, version = load_registered_explainer(ESTIMATOR_NAME, model)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    except MlflowException as err:
        raise cannot_load(source, uri, err) from None
    return estimator, source, f"models:/{ESTIMATOR_NAME}/{version.version}"


def cannot_load(source: str, uri: str, err) -> click.ClickException:
    """The one-line error for a registered model that MLflow cannot give."""
    return click.ClickException(
        f"{source}: cannot load it from {uri} ({err.message.splitlines()[0]}); "
        "run dvc repro to train and promote a model, or pick another --model")


def registered_classifier(model: str, stamps: np.ndarray, source: str):
    """Version or alias ``model`` of the registered classifier, checked complete;
    ``ValueError`` naming ``source`` when the stamps are not of its shape."""
    import mlflow.tensorflow

    import pipeline.core.models  # noqa: F401  (registers the custom layers)
    from pipeline.core.explain import model_geometry
    from pipeline.glue.completion import complete_version

    version = complete_version(mlflow.MlflowClient(), CLASSIFIER_NAME, model)
    classifier = mlflow.tensorflow.load_model(f"models:/{CLASSIFIER_NAME}/{version.version}")
    shape = model_geometry(classifier).shape
    if tuple(stamps.shape[1:]) != shape:
        raise ValueError(f"{source}: stamps of shape {stamps.shape[1:]}, the classifier "
                         f"{model_uri(CLASSIFIER_NAME, model)} "
                         f"takes stamps of shape {shape}")
    return classifier


def file_classifier(path: Path, stamps: np.ndarray, channels: tuple[int, ...], pad: int,
                    crop: int, real_index: int, output: str):
    """The classifier file at ``path`` wrapped for ``stamps`` (N, H, W, C): the same
    import as ``classifier.source: file`` in the pipeline, outputs checked on the first
    stamps."""
    from pipeline.core.geometry import StampGeometry
    from pipeline.core.models.imported import import_classifier

    model, _ = import_classifier(path, StampGeometry.from_stamps(stamps), channels, pad=pad,
                                 crop=crop, real_index=real_index, output=output,
                                 check_on=stamps)
    return model


def occlusion_settings():
    """The ``occlusion`` section of the project's params.yaml when run in a project (the
    settings the pipeline's exact maps use), else its defaults."""
    from pipeline.core.params import OcclusionParams
    from pipeline.glue.files import PARAMS_FILE, load_params

    if not Path(PARAMS_FILE).is_file():
        return OcclusionParams()
    return OcclusionParams.from_dict(load_params().get("occlusion", {}))


def exact_maps(classifier, stamps: np.ndarray, occlusion,
               spark_master: str | None = None) -> dict[str, np.ndarray]:
    """Exact maps (N, H, W), target class (N,) and its probability (N,) of ``stamps``
    under ``classifier`` (a Keras model taking them) with ``occlusion`` settings, in this
    process or, with ``spark_master``, by the same engine in a Spark job."""
    from pipeline.core.explain import engine_for

    if spark_master is not None:
        import dataclasses

        from pipeline.glue.spark import explain_on_spark

        return explain_on_spark(stamps, classifier, "exact", spark_master,
                                settings=dataclasses.asdict(occlusion))

    engine = engine_for(classifier, occlusion)
    maps, target, base_prob = engine.maps(stamps, chunk_size=occlusion.chunk_size,
                                          progress=True)
    return {"maps": maps, "target": target, "base_prob": base_prob}


def write_panels(directory: Path, stamps: np.ndarray, maps: np.ndarray, captions: list[str]):
    """One PNG per stamp (channels beside the map) in ``directory``, made in a temporary
    folder first so a failure leaves no partial set behind."""
    import matplotlib.pyplot as plt

    from pipeline.core.plots import stamp_panel_figure

    directory.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for index, caption in enumerate(captions):
            figure = stamp_panel_figure(stamps[index], maps[index], caption)
            figure.savefig(temp / f"stamp_{index:06d}.png", format="png")
            plt.close(figure)
        directory.mkdir(exist_ok=True)
        for png in sorted(temp.iterdir()):
            os.replace(png, directory / png.name)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def write_report(out: Path, images: np.ndarray, result: dict, labels, kinds, r, amplitude,
                 title: str, note: str) -> Path:
    """The explanation browser in ``out``: ``index.html`` and, per stamp, ``img/NNNNNN.png``
    (its channels beside its map) and a small ``img/NNNNNN_thumb.png``. Built in a
    temporary folder beside ``out`` and swapped in whole (``out`` replaced), so a failure
    leaves ``out`` as it was. ``result``: {"maps" (N, H, W), "target", "base_prob"[,
    "doubt"]}; ``labels``, ``kinds``, ``r``, ``amplitude`` (the exact maps' max |drop|)
    (N,) or None."""
    import matplotlib.pyplot as plt

    from pipeline.core import browser
    from pipeline.core.geometry import CLASS_NAMES
    from pipeline.core.plots import stamp_panel_figure

    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (temp / "img").mkdir()
        names = []
        for index in range(len(images)):
            caption = (f"#{index}: predicted {CLASS_NAMES[int(result['target'][index])]}, "
                       f"p = {result['base_prob'][index]:.3f}")
            figure = stamp_panel_figure(images[index], result["maps"][index], caption)
            panel, thumb = f"img/{index:06d}.png", f"img/{index:06d}_thumb.png"
            figure.savefig(temp / panel, format="png", dpi=100)
            figure.savefig(temp / thumb, format="png", dpi=30)
            plt.close(figure)
            names.append((thumb, panel))
        rows = browser.rows_for(result["target"], result["base_prob"], labels, kinds, r,
                                result.get("doubt"), names, amplitude)
        (temp / "index.html").write_text(browser.page_html(rows, title, note))
        if out.exists():
            shutil.rmtree(out)
        os.replace(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out / "index.html"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pipeline", prog_name="occmap")
def main():
    """Occlusion maps for HiTS real/bogus stamps, from the MLflow model registry.

    The registry is the project's MLflow store (mlruns/mlflow.db) unless
    MLFLOW_TRACKING_URI or --tracking-uri names another one.
    """


@main.command()
@click.argument("stamps", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the maps (.npz: maps (N, H, W) float32, ...).")
@click.option("--exact", is_flag=True,
              help="Exact maps (441 classifications per stamp) with the registered "
                   "classifier instead of the one-pass estimator.")
@click.option("--exact-share", type=click.FloatRange(0, 1), metavar="F",
              help="Estimate every map, then recompute exactly the share F (0 to 1) of them "
                   "whose doubt is highest, with the classifier the estimator was trained "
                   "for ('exact' in MAPS.npz says which).")
@click.option("--max-doubt", type=click.FloatRange(min=0), metavar="D",
              help="Like --exact-share, but recompute the maps whose doubt exceeds D "
                   "(doubt ~ 1 - r against the exact map, in [0, 2]).")
@click.option("--model", default="champion", show_default=True, metavar="ALIAS|VERSION",
              help=f"Which registered version: an alias or a version number of "
                   f"{ESTIMATOR_NAME} (with --exact: of {CLASSIFIER_NAME}).")
@click.option("--png", "png_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write one PNG per stamp (its channels beside its map) here.")
@click.option("--png-limit", default=100, show_default=True, type=click.IntRange(min=0),
              help="At most this many PNGs, the first stamps of the file (0: all).")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Stamps per estimator call.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
              help="MLflow tracking/registry URI [default: the project's store; env: "
                   "MLFLOW_TRACKING_URI].")
@click.option("--classifier-file", type=click.Path(exists=True, path_type=Path),
              metavar="PATH",
              help="With --exact: a model file of your own instead of the registry (.keras, "
                   "Keras 2 .h5 or a SavedModel directory).")
@click.option("--channels", "channels", multiple=True, type=click.IntRange(min=0),
              default=(3,), show_default=True, metavar="INDEX",
              help="With --classifier-file: the stamp channels the model takes, in its order "
                   "(0 template, 1 science, 2 difference, 3 SNR difference); repeat for more.")
@click.option("--pad", default=0, show_default=True, type=click.IntRange(min=0),
              help="With --classifier-file: zero pixels added on every side to reach the "
                   "model's input size (21x21 -> 27x27: 3).")
@click.option("--crop", default=0, show_default=True, type=click.IntRange(min=0),
              help="With --classifier-file: pixels cut from every side instead.")
@click.option("--real-index", default=1, show_default=True, type=click.IntRange(0, 1),
              help="With --classifier-file: the model's output index of the real class.")
@click.option("--output", "output_kind", default="softmax", show_default=True,
              type=click.Choice(["softmax", "sigmoid"]),
              help="With --classifier-file: a softmax pair or one sigmoid unit.")
@click.option("--allow-out-of-range", is_flag=True,
              help="Explain stamps with values outside [0, 1] instead of refusing them "
                   "(the models were trained on min-max normalised stamps: such maps are "
                   "extrapolations).")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's and MLflow's own log lines and warnings too.")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local",
              show_default=True,
              help="Where the maps are computed: in this process, or by an Apache Spark job "
                   "(a DataFrame of stamps, one pandas UDF per partition; the same maps).")
@click.option("--master", default="local[*]", show_default=True, metavar="URL",
              help="With --engine spark: the Spark master (local[2], spark://HOST:PORT).")
def explain(stamps: Path, out: Path, exact: bool, exact_share: float | None,
            max_doubt: float | None, model: str, png_dir: Path | None,
            png_limit: int, batch_size: int, tracking_uri: str | None,
            classifier_file: Path | None, channels: tuple[int, ...], pad: int, crop: int,
            real_index: int, output_kind: str, allow_out_of_range: bool, verbose: bool,
            engine: str, master: str):
    """Compute the occlusion map of every stamp in STAMPS.

    STAMPS is an .npz with an array 'images' (N, H, W, C) in [0, 1], the shape the model
    was trained on (HiTS: 21x21x4; optionally 'labels'), or a HiTS2013 pickle (read without
    running code from it). MAPS.npz gets 'maps' (N, H, W) float32: the drop of the
    explained class's probability when the 3x3 patch around each pixel is hidden
    (positive: evidence for the class); 'target' (N,), the explained (predicted) class (0
    bogus, 1 real), and 'base_prob' (N,), its probability; 'exact' (N,), true where the map
    is exact; 'doubt' (N,) for estimated maps (how wrong each may be, ~1 - r against the
    exact map); 'method' and 'model_uri' (with a fallback also 'exact_model_uri').
    """
    quiet_libraries(verbose)
    try:
        arrays = read_stamps(stamps, allow_out_of_range)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    images = arrays["images"]
    spark = master if engine == "spark" else None
    if classifier_file is not None and not exact:
        raise click.UsageError("--classifier-file gives exact maps: add --exact (the "
                               "estimator is the registered one, trained for a classifier)")
    selective = exact_share is not None or max_doubt is not None
    if exact_share is not None and max_doubt is not None:
        raise click.UsageError("give --exact-share or --max-doubt, not both (a share of the "
                               "maps, or a doubt above which maps are recomputed)")
    if selective and exact:
        raise click.UsageError("--exact already makes every map exact: --exact-share and "
                               "--max-doubt choose which estimated maps to recompute")

    from mlflow.exceptions import MlflowException

    from pipeline.core.geometry import CLASS_NAMES
    from pipeline.glue.files import atomic_paths, save_npz

    uri = tracking_uri or default_store()
    open_registry(uri, must_exist=classifier_file is None)  # read only without a file
    name = CLASSIFIER_NAME if exact else ESTIMATOR_NAME
    source = (str(classifier_file) if classifier_file is not None
              else model_uri(name, model))
    try:
        if classifier_file is not None:
            classifier = file_classifier(classifier_file, images, channels, pad, crop,
                                         real_index, output_kind)
            result = exact_maps(classifier, images, occlusion_settings(), spark)
        elif exact:
            classifier = registered_classifier(model, images, str(stamps))
            result = exact_maps(classifier, images, occlusion_settings(), spark)
        else:
            result, version = estimated_maps(model, images, batch_size, str(stamps),
                                             allow_out_of_range, spark)
            if selective:
                result, exact_uri = with_exact_fallback(result, version, images, exact_share,
                                                        max_doubt, str(stamps), spark)
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    except MlflowException as err:
        raise cannot_load(source, uri, err) from None
    if exact:
        result["exact"] = np.ones(len(images), bool)
    result.setdefault("exact", np.zeros(len(images), bool))
    method = ("exact" if exact else "estimate+exact" if result["exact"].any() else "estimate")
    result |= {"method": np.array(method), "model_uri": np.array(source)}
    if selective and exact_uri is not None:
        result["exact_model_uri"] = np.array(exact_uri)
    if "labels" in arrays:
        result["labels"] = arrays["labels"]

    with atomic_paths(out) as (temp,):
        save_npz(temp, result)
        if png_dir is not None:
            count = len(images) if png_limit == 0 else min(png_limit, len(images))
            captions = [f"{stamps.name} #{i}: "
                        f"{'exact' if result['exact'][i] else 'estimated'} map of class "
                        f"{CLASS_NAMES[result['target'][i]]}, p = {result['base_prob'][i]:.3f}"
                        + ("" if result["exact"][i] or "doubt" not in result
                           else f", doubt {result['doubt'][i]:.3f}")
                        for i in range(count)]
            write_panels(png_dir, images, result["maps"], captions)
    recomputed = int(result["exact"].sum())
    kind = ("exact" if exact else f"estimated ({recomputed} recomputed exactly with "
            f"{result['exact_model_uri']})" if recomputed else "estimated")
    click.echo(f"occmap: {len(images)} {kind} maps from {source} -> {out}"
               + (f" (+ PNGs in {png_dir})" if png_dir else ""))


@main.command()
@click.option("--model", default="champion", show_default=True, metavar="ALIAS|VERSION",
              help=f"Which registered version of {ESTIMATOR_NAME}: an alias or a number.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (the default answers this machine only).")
@click.option("--port", default=5001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--max-stamps", default=DEFAULT_MAX_STAMPS,
              show_default=True, type=click.IntRange(min=1),
              help="Most stamps in one request; more get HTTP 413.")
@click.option("--max-request-mb", default=DEFAULT_MAX_REQUEST_BYTES / 2**20,
              show_default=True, type=click.FloatRange(min=0.001),
              help="Largest request body in MiB; larger get HTTP 413 before being read.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
              help="MLflow tracking/registry URI [default: the project's store; env: "
                   "MLFLOW_TRACKING_URI].")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's and MLflow's own log lines and warnings too.")
def serve(model: str, host: str, port: int, max_stamps: int, max_request_mb: float,
          tracking_uri: str | None, verbose: bool):
    """Serve the registered estimator over REST, with bounded requests.

    POST /invocations with {"inputs": stamps} (MLflow's protocol; optional "params":
    {"allow_out_of_range": true}) returns {"predictions": maps}. Only the version's Keras
    file is read from the store. Errors give the reason, never the request's data.
    """
    quiet_libraries(verbose)
    import uvicorn

    from pipeline.glue import serving

    estimator, source, pinned = registered_estimator(model, tracking_uri)
    app = serving.make_app(estimator, pinned, max_stamps, int(max_request_mb * 2**20))
    click.echo(f"occmap serve: {source} ({pinned}) on http://{host}:{port}, at most "
               f"{max_stamps} stamps / {max_request_mb:g} MiB per request")
    uvicorn.run(app, host=host, port=port, log_level="warning", workers=1)


@main.command()
@click.argument("stamps", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the page (index.html and img/; replaced).")
@click.option("--model", default="champion", show_default=True, metavar="ALIAS|VERSION",
              help=f"Which registered version of {ESTIMATOR_NAME}.")
@click.option("--limit", default=500, show_default=True, type=click.IntRange(min=1),
              help="At most this many stamps, the first of the file.")
@click.option("--exact", "with_exact", is_flag=True,
              help="Also compute each stamp's exact map (441 classifications per stamp) with "
                   "the classifier the estimator was trained for, for the column 'r vs "
                   "exact' (the estimate's fidelity).")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Stamps per estimator call.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
              help="MLflow tracking/registry URI [default: the project's store; env: "
                   "MLFLOW_TRACKING_URI].")
@click.option("--allow-out-of-range", is_flag=True,
              help="Explain stamps with values outside [0, 1] instead of refusing them.")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's and MLflow's own log lines and warnings too.")
def report(stamps: Path, out: Path, model: str, limit: int, with_exact: bool,
           batch_size: int, tracking_uri: str | None, allow_out_of_range: bool,
           verbose: bool):
    """Write a static HTML explanation browser of the stamps in STAMPS.

    One row per stamp: its channels and estimated map, true class (when STAMPS has
    'labels'), predicted class and its probability p, kind (when it has 'kind'), doubt,
    and with --exact the estimate's r against the exact map. Sort by any column, filter by
    class, kind, p and r, click a row for its big panel. The page fetches nothing: open
    DIR/index.html in any browser, offline too.
    """
    quiet_libraries(verbose)
    try:
        arrays = read_stamps(stamps, allow_out_of_range)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    images = arrays["images"][:limit]
    from mlflow.exceptions import MlflowException

    from pipeline.core.fidelity import pearson_r

    uri = tracking_uri or default_store()
    open_registry(uri)
    source = model_uri(ESTIMATOR_NAME, model)
    try:
        result, version = estimated_maps(model, images, batch_size, str(stamps),
                                         allow_out_of_range)
        r = amplitude = None
        if with_exact:
            # every row recomputed: the fallback's path, with the estimator's classifier
            exact, _ = with_exact_fallback(dict(result), version, images, 1.0, None,
                                           str(stamps))
            r = pearson_r(result["maps"], exact["maps"])
            amplitude = np.abs(exact["maps"]).max(axis=(1, 2))
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    except MlflowException as err:
        raise cannot_load(source, uri, err) from None
    pinned = f"models:/{ESTIMATOR_NAME}/{version.version}"
    labels = arrays["labels"][:limit] if "labels" in arrays else None
    kinds = arrays["kind"][:limit] if "kind" in arrays else None
    page = write_report(out, images, result, labels, kinds, r, amplitude,
                        f"occmap report: {stamps.name}",
                        f"{len(images)} stamps of {stamps}, maps estimated by {source} "
                        f"({pinned}).")
    click.echo(f"occmap report: {len(images)} stamps -> {page} (open it in any browser)")


@main.group()
def alerts():
    """Explain a broker's alerts on Apache Spark: a Fink-style science module.

    Alerts are Parquet rows: 'candid' (long) and one array<float> column of H*W pixels
    (row-major, in [0, 1]) per stamp channel (HiTS: template, science, difference,
    snr_difference); other columns are carried through. Explained alerts get the struct
    column 'occlusion' (map, explained_class, probability, doubt) and 'occlusion_model'.
    """


@alerts.command("write")
@click.argument("stamps", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the Parquet alert files (alerts-NNN.parquet).")
@click.option("--files", default=1, show_default=True, type=click.IntRange(min=1),
              help="Cut the alerts into this many files (a stream's arrivals).")
@click.option("--first-candid", default=1, show_default=True, type=click.IntRange(min=0),
              help="The candid of the first stamp; the next ones count up.")
@click.option("--prefix", default="alerts", show_default=True,
              help="File names: PREFIX-NNN.parquet.")
@click.option("--limit", default=0, show_default=True, type=click.IntRange(min=0),
              help="At most this many stamps, the first of the file (0: all).")
def alerts_write(stamps: Path, out: Path, files: int, first_candid: int, prefix: str,
                 limit: int):
    """Write the stamps of STAMPS (.npz or HiTS pickle) as Parquet alerts (twin alerts:
    with the file's 'labels' and 'kind' as columns 'label' and 'kind')."""
    from pipeline.core.geometry import HITS_CHANNELS
    from pipeline.glue.alerts import twin_columns, write_alert_files

    try:
        arrays = read_stamps(stamps)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    count = len(arrays["images"]) if limit == 0 else min(limit, len(arrays["images"]))
    images = arrays["images"][:count]
    if images.shape[-1] != len(HITS_CHANNELS):
        raise click.ClickException(f"{stamps}: stamps of {images.shape[-1]} channels; the "
                                   f"alert columns are HiTS's {len(HITS_CHANNELS)}")
    extra = twin_columns(arrays["labels"][:count] if "labels" in arrays else None,
                         arrays["kind"][:count] if "kind" in arrays else None)
    candids = np.arange(first_candid, first_candid + count, dtype=np.int64)
    try:
        written = write_alert_files(out, images, candids, HITS_CHANNELS, min(files, count),
                                    prefix, extra)
    except FileExistsError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"occmap alerts: {count} alerts (candid {candids[0]}..{candids[-1]}) in "
               f"{len(written)} file(s) -> {out}")


@contextlib.contextmanager
def _alert_job(model: str, master: str, tracking_uri: str | None, verbose: bool):
    """(spark, shipped model name, model shape, channel columns, pinned URI) for an alert
    job: the registered estimator loaded from its Keras file and shipped to executors
    (from a temporary folder, removed when the job ends)."""
    from pipeline.core.geometry import HITS_CHANNELS
    from pipeline.glue.alerts import ship_model
    from pipeline.glue.spark import spark_session

    estimator, source, pinned = registered_estimator(model, tracking_uri)
    if estimator.shape[-1] != len(HITS_CHANNELS):
        raise click.ClickException(f"{source}: explains stamps of {estimator.shape[-1]} "
                                   f"channels; alert columns are HiTS's {HITS_CHANNELS}")
    spark = spark_session(master, app="occmap-alerts", quiet=not verbose)
    with tempfile.TemporaryDirectory(prefix="occmap-alerts-") as folder:
        name = ship_model(spark, estimator.model, folder)
        yield spark, name, estimator.shape, HITS_CHANNELS, pinned


def _alert_options(command):
    """The options every alert job takes: model, master, store, range, verbosity."""
    options = [
        click.option("--model", default="champion", show_default=True,
                     metavar="ALIAS|VERSION",
                     help=f"Which registered version of {ESTIMATOR_NAME}."),
        click.option("--master", default="local[*]", show_default=True, metavar="URL",
                     help="The Spark master (local[2], spark://HOST:PORT)."),
        click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
                     help="MLflow tracking/registry URI [default: the project's store; "
                          "env: MLFLOW_TRACKING_URI]."),
        click.option("--allow-out-of-range", is_flag=True,
                     help="Explain stamps with values outside [0, 1] instead of failing."),
        click.option("--verbose", is_flag=True,
                     help="Show TensorFlow's, MLflow's and Spark's own log lines too."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@alerts.command("explain")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Folder for the explained alerts (Parquet); must not exist.")
@_alert_options
def alerts_explain(source: Path, out: Path, model: str, master: str,
                   tracking_uri: str | None, allow_out_of_range: bool, verbose: bool):
    """Batch job: explain the Parquet alerts in SOURCE (a file or a folder)."""
    from pipeline.glue.alerts import explain_alerts
    from pipeline.glue.spark import executor_error_line

    quiet_libraries(verbose)
    if out.exists():
        raise click.ClickException(f"{out}: already exists (explained alerts are written "
                                   "to a new folder)")
    with _alert_job(model, master, tracking_uri, verbose) as (spark, name, shape, channels, pinned):
        try:
            count = explain_alerts(spark, str(source), str(out), name, shape, channels,
                                   allow_out_of_range, pinned)
        except Exception as error:  # Spark's AnalysisException / PythonException
            raise click.ClickException(f"{source}: the Spark job failed, nothing written: "
                                       f"{executor_error_line(error)}") from None
    click.echo(f"occmap alerts: {count} alerts explained by {pinned} -> {out}")


@alerts.command("stream")
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder the explained alerts are appended to (Parquet, Spark's file "
                   "sink: read it through Spark, its _spark_metadata says which files "
                   "count).")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The job's progress; restart with the same folder to go on where it "
                   "stopped (every alert explained exactly once).")
@click.option("--files-per-batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Alert files per micro-batch.")
@click.option("--available-now", is_flag=True,
              help="Explain the alerts there now, then stop (else: watch SOURCE until "
                   "stopped with Ctrl-C or SIGTERM).")
@click.option("--poll", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between looks at SOURCE.")
@_alert_options
def alerts_stream(source: Path, out: Path, checkpoint: Path, files_per_batch: int,
                  available_now: bool, poll: float, model: str, master: str,
                  tracking_uri: str | None, allow_out_of_range: bool, verbose: bool):
    """Streaming job: explain alert files as they arrive in SOURCE (Parquet, written
    whole: e.g. by 'occmap alerts write'), appending them to OUT."""
    import signal

    from pipeline.glue.alerts import TWIN_SCHEMA, stream_alerts
    from pipeline.glue.spark import executor_error_line

    quiet_libraries(verbose)
    source.mkdir(parents=True, exist_ok=True)  # the folder alerts will arrive in
    with _alert_job(model, master, tracking_uri, verbose) as (spark, name, shape, channels, pinned):
        # twin alerts' truth is carried through (null in a broker's alerts)
        query = stream_alerts(spark, str(source), str(out), str(checkpoint), name, shape,
                              channels, TWIN_SCHEMA, files_per_batch, available_now, poll,
                              allow_out_of_range, pinned)
        click.echo(f"occmap alerts: watching {source} with {pinned} -> {out} "
                   f"(checkpoint {checkpoint})")
        signal.signal(signal.SIGTERM, lambda signum, frame: query.stop())
        seen = -1
        try:
            while query.isActive:
                query.awaitTermination(poll)
                progress = query.lastProgress
                if progress and progress["batchId"] != seen and progress["numInputRows"]:
                    seen = progress["batchId"]
                    click.echo(f"occmap alerts: batch {seen}: "
                               f"{progress['numInputRows']} alerts explained")
        except KeyboardInterrupt:
            query.stop()
        failure = query.exception()
    if failure is not None:
        raise click.ClickException(f"{source}: the streaming job failed (its batch is not "
                                   f"committed; fix and restart): "
                                   f"{executor_error_line(failure)}")


@main.group()
def store():
    """The project's MLflow store (mlruns/): re-root it after a move, print its URLs."""


@store.command()
def reroot():
    """Point the store at its own artifacts after the project folder was moved or copied.

    The stages, occmap and make ui do it themselves; this command does it alone.
    """
    from pipeline.glue import tracking

    root = project_folder()
    if default_store() != tracking.default_tracking_uri(root):
        raise click.ClickException(f"{default_store()}: not the project's embedded store "
                                   "(MLFLOW_TRACKING_URI is set); nothing to re-root")
    count = tracking.reroot_store(root)
    click.echo(f"occmap store reroot: {count} location(s) now under {root / 'mlruns'}")


@store.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def urls(host: str, port: int):
    """The MLflow UI's pages for this project: the runs table and the models."""
    from pipeline.glue import tracking

    uri = default_store()
    open_registry(uri)
    import mlflow

    found = mlflow.get_experiment_by_name(tracking.EXPERIMENT)
    base = f"http://{host}:{port}/#"
    if found is not None:
        click.echo(f"runs:   {base}/experiments/{found.experiment_id}/runs"
                   "?workflowType=machine_learning")
    click.echo(f"models: {base}/models?workflowType=machine_learning")


if __name__ == "__main__":
    main()

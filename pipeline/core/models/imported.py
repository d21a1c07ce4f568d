"""Classifiers a user already has: a Keras 3 ``.keras`` file, a legacy Keras 2 HDF5 file
or a TensorFlow SavedModel directory, wrapped into a model that takes the project's stamps.

``import_classifier`` returns a ``keras.Model`` mapping stamps (B, H, W, C) float32 in
[0, 1] to probabilities (B, 2) in the project's class order (bogus, real), like the nets
the project trains, so every stage downstream works unchanged:

    stamps -> SelectChannels "channels" -> ZeroPadding2D / Cropping2D "fit_input"
           -> the file's layers (re-traced, flat) -> "probabilities"

- The channels are selected, and the input size reached, INSIDE the model: the occlusion
  engine hides patches of the stamp, never of the padding.
- The file's layers stay individual layers of the wrapper (not one nested model), so the
  estimator can read its penultimate features and its last conv maps as it does for the
  project's own nets. When the file's last layer is a Dense with a softmax (or sigmoid)
  activation it becomes the Dense "probabilities" with its columns put in (bogus, real)
  order (a sigmoid unit z becomes the softmax pair of logits (0, z): the same
  probabilities); otherwise the output passes through ``ClassProbabilities``.
- A SavedModel is an opaque graph (``EmbeddedSavedModel``, saved inside the ``.keras``
  file as an asset): it has no inner layers, so the estimator conditions that need them
  (``features``, ``taps``) are refused (``is_opaque``).

Legacy HDF5 files (Keras 2: ``model_config`` JSON + ``model_weights/<layer>/...``) are
rebuilt here from an allow-list of standard layers (``LEGACY_LAYERS``): nothing in the
file is executed, and any other layer (a ``Lambda``, a custom class) is refused with one
error naming it. Every error is a ``ClassifierFileError`` whose message starts with the
file's path.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from pipeline.core.geometry import StampGeometry
from pipeline.core.models.layers import SelectChannels

FORMATS = ("keras", "h5", "savedmodel")
OUTPUTS = ("softmax", "sigmoid")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# Names the wrapper gives its own layers; a file's layer may not use them.
WRAPPER_NAMES = ("stamps", "channels", "fit_input", "probabilities")

# Legacy (Keras 2) layer classes rebuilt here, with the config keys each passes on to its
# Keras 3 class (renamed where Keras 3 renamed them). Initialisers, regularisers and
# constraints are left out: they only matter for training, and the weights come from the
# file. Keys absent from a file take Keras 3's default, which is Keras 2's.
LEGACY_LAYERS: dict[str, tuple[str, ...]] = {
    "InputLayer": (),
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "activation",
               "use_bias"),
    "Dense": ("units", "activation", "use_bias"),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "GlobalMaxPooling2D": (),
    "GlobalAveragePooling2D": (),
    "Flatten": (),
    "Dropout": ("rate",),
    "SpatialDropout2D": ("rate",),
    "Activation": ("activation",),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "LeakyReLU": ("negative_slope",),
    "ELU": ("alpha",),
    "Softmax": ("axis",),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "ZeroPadding2D": ("padding",),
    "Cropping2D": ("cropping",),
    "Reshape": ("target_shape",),
    "Concatenate": ("axis",),
    "Add": (),
    "Subtract": (),
    "Multiply": (),
    "Average": (),
    "Maximum": (),
    "Minimum": (),
}
RENAMED_KEYS = {("LeakyReLU", "alpha"): "negative_slope"}
# Keras 2 wrote these as plain lists; Keras 3 wants tuples.
TUPLE_KEYS = ("kernel_size", "strides", "dilation_rate", "pool_size", "target_shape",
              "padding", "cropping")


class ClassifierFileError(ValueError):
    """A classifier file that cannot be imported; the message names the file and why."""


@keras.saving.register_keras_serializable(package="pipeline")
class ClassProbabilities(keras.layers.Layer):
    """A model's raw output -> (B, 2) probabilities in (bogus, real) order.

    ``output="softmax"``: (B, 2) probabilities, column ``real_index`` the real class;
    ``output="sigmoid"``: (B, 1) p, read as the pair (1 - p, p) whose index
    ``real_index`` is the real class (1: p is p(real); 0: p is p(bogus)).
    """

    def __init__(self, output: str = "softmax", real_index: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.output_kind = str(output)
        self.real_index = int(real_index)

    def call(self, inputs):
        if self.output_kind == "sigmoid":
            inputs = ops.concatenate([1.0 - inputs, inputs], axis=-1)
        return ops.take(inputs, [1 - self.real_index, self.real_index], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)

    def get_config(self):
        return {**super().get_config(), "output": self.output_kind,
                "real_index": self.real_index}


@keras.saving.register_keras_serializable(package="pipeline")
class EmbeddedSavedModel(keras.layers.Layer):
    """A TensorFlow SavedModel's serving signature as a layer: (B, h, w, c) -> (B, K).

    The SavedModel directory travels inside the ``.keras`` file as this layer's asset
    (``save_assets`` / ``load_assets``), so a saved wrapper needs nothing outside itself.
    Unlike ``keras.layers.TFSMLayer`` (whose config holds the original path, "not intended
    to be portable"), nothing here points outside the model file. Loading it runs the
    graph's TensorFlow ops, no Python code; it has no inner Keras layers (opaque).
    """

    def __init__(self, input_shape_: tuple, output_units: int, input_key: str,
                 output_key: str, endpoint: str = "serving_default", **kwargs):
        kwargs["trainable"] = False  # a frozen graph: nothing here trains
        super().__init__(**kwargs)
        self.input_shape_ = tuple(int(size) for size in input_shape_)
        self.output_units = int(output_units)
        self.input_key, self.output_key, self.endpoint = input_key, output_key, endpoint
        self._files: dict[str, bytes] = {}
        self._function = None

    def attach(self, directory: str | Path) -> None:
        """Load the SavedModel at ``directory`` and call its ``endpoint`` signature. Its
        files are kept in memory: Keras deletes the folder it extracts assets to once a
        model is loaded, and a loaded model may be saved again (into an explainer)."""
        import tensorflow as tf

        directory = Path(directory)
        self._files = {str(file.relative_to(directory)): file.read_bytes()
                       for file in sorted(directory.rglob("*")) if file.is_file()}
        self._loaded = tf.saved_model.load(str(directory))
        self._function = self._loaded.signatures[self.endpoint]

    def call(self, inputs):
        if self._function is None:
            raise RuntimeError(f"{self.name}: the SavedModel is not attached (a model file "
                               "saved without its assets?)")
        return self._function(**{self.input_key: ops.cast(inputs, "float32")})[self.output_key]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_units)

    def save_assets(self, dir_path):
        for name, content in self._files.items():
            target = Path(dir_path) / "savedmodel" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)

    def load_assets(self, dir_path):
        self.attach(Path(dir_path) / "savedmodel")

    def get_config(self):
        return {**super().get_config(), "input_shape_": list(self.input_shape_),
                "output_units": self.output_units, "input_key": self.input_key,
                "output_key": self.output_key, "endpoint": self.endpoint}


def is_opaque(model: keras.Model) -> bool:
    """Whether ``model`` holds an opaque graph (an imported SavedModel) anywhere."""
    return any(isinstance(layer, EmbeddedSavedModel) or
               (isinstance(layer, keras.Model) and is_opaque(layer))
               for layer in model.layers)


# --- reading a file -------------------------------------------------------------------

def detect_format(path: str | Path) -> str:
    """``keras`` (a zip), ``h5`` (HDF5) or ``savedmodel`` (a directory with
    saved_model.pb), from the bytes on disk, not the name."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ClassifierFileError(f"{path}: a directory without saved_model.pb, not a "
                                  "TensorFlow SavedModel")
    if not path.is_file():
        raise ClassifierFileError(f"{path}: no such file or directory")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head.startswith(ZIP_MAGIC):
        return "keras"
    raise ClassifierFileError(f"{path}: not a model file (expected a Keras 3 .keras zip, an "
                              "HDF5 .h5 or a SavedModel directory)")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory's files (relative names and contents, in
    sorted order): what the registry records of an imported classifier."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_model_file(path: str | Path) -> tuple[keras.Model | EmbeddedSavedModel, str]:
    """(model, format) of the file at ``path``: a Keras model for ``.keras`` and HDF5
    files, an ``EmbeddedSavedModel`` layer for a SavedModel."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "savedmodel":
        return read_savedmodel(path), kind
    if kind == "h5":
        return read_h5(path), kind
    import pipeline.core.models  # noqa: F401  (registers the project's layers)

    try:
        model = keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError, KeyError, zipfile.BadZipFile) as err:
        raise ClassifierFileError(f"{path}: not a loadable Keras 3 model "
                                  f"({_first_line(err)})") from None
    return model, kind


def read_h5(path: str | Path) -> keras.Model:
    """The model of an HDF5 file: Keras 3's own loader for files Keras 3 wrote, the
    legacy rebuild (``rebuild_legacy``) for Keras 2 files."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            if "model_config" not in h5.attrs:
                raise ClassifierFileError(f"{path}: an HDF5 file without model_config (weights "
                                          "only, or not a Keras model)")
            if not _text(h5.attrs.get("keras_version", "")).startswith("3"):
                return rebuild_legacy(h5, path)
    except OSError as err:
        raise ClassifierFileError(f"{path}: unreadable HDF5, truncated or damaged "
                                  f"({_first_line(err)})") from None
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError, KeyError) as err:
        raise ClassifierFileError(f"{path}: not a loadable Keras 3 HDF5 model "
                                  f"({_first_line(err)})") from None


def rebuild_legacy(h5, path: Path) -> keras.Model:
    """The Keras 2 model in the open HDF5 file ``h5`` as a Keras 3 model with its weights
    (Sequential configs, in Keras 2.1's list form or the later dict form, and functional
    ``Model`` configs)."""
    try:
        config = json.loads(_text(h5.attrs["model_config"]))
    except (json.JSONDecodeError, TypeError) as err:
        raise ClassifierFileError(f"{path}: model_config is not JSON ({err})") from None
    kind, body = config.get("class_name"), config.get("config")
    try:
        if kind == "Sequential":
            specs = body if isinstance(body, list) else (body or {}).get("layers", [])
            model = _rebuild_sequential(specs, path)
        elif kind in ("Model", "Functional"):
            model = _rebuild_functional(body or {}, path)
        else:
            raise ClassifierFileError(f"{path}: a {kind!r} model config; only Sequential and "
                                      "functional (Model) configs can be rebuilt")
    except ClassifierFileError:
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
        # a config of the right kind but not of Keras 2's shape (or layers that do not fit)
        raise ClassifierFileError(f"{path}: model_config cannot be rebuilt "
                                  f"({type(err).__name__}: {_first_line(err)})") from None
    weights = h5["model_weights"] if "model_weights" in h5 else h5
    _load_legacy_weights(model, weights, path)
    return model


def _rebuild_sequential(specs: list[dict], path: Path) -> keras.Model:
    if not specs:
        raise ClassifierFileError(f"{path}: a Sequential model without layers")
    shape = _input_shape(specs[0], path)  # Keras 2.1: on the first layer; later: InputLayer
    if shape is None:
        raise ClassifierFileError(f"{path}: the first layer {_name(specs[0])!r} states no "
                                  "input shape (batch_input_shape)")
    specs = [spec for spec in specs if spec.get("class_name") != "InputLayer"]
    x = inputs = keras.Input(shape, name="input")
    for spec in _fold_output_activation(specs):
        x = _legacy_layer(spec, path)(x)
    return keras.Model(inputs, x, name="imported")


def _rebuild_functional(body: dict, path: Path) -> keras.Model:
    specs = body.get("layers", [])
    inputs_of = [entry[0] for entry in body.get("input_layers", [])]
    outputs_of = [entry[0] for entry in body.get("output_layers", [])]
    if len(inputs_of) != 1 or len(outputs_of) != 1:
        raise ClassifierFileError(f"{path}: a model with {len(inputs_of)} inputs and "
                                  f"{len(outputs_of)} outputs; a classifier of stamps has one "
                                  "of each")
    specs, outputs_of = _fold_functional_output(specs, outputs_of[0], path)
    tensors: dict[tuple[str, int], object] = {}
    for spec in specs:
        name = spec.get("name") or spec.get("config", {}).get("name")
        if spec.get("class_name") == "InputLayer":
            tensors[(name, 0)] = keras.Input(_input_shape(spec, path), name=name)
            continue
        layer = _legacy_layer(spec, path)
        for node_index, node in enumerate(spec.get("inbound_nodes", [])):
            try:
                args = [tensors[(entry[0], entry[1])] for entry in node]
            except KeyError as err:
                raise ClassifierFileError(f"{path}: layer {name!r} reads {err.args[0]}, which "
                                          "no earlier layer makes") from None
            tensors[(name, node_index)] = layer(args[0] if len(args) == 1 else args)
    return keras.Model(tensors[(inputs_of[0], 0)], tensors[(outputs_of, 0)], name="imported")


def _fold_output_activation(specs: list[dict]) -> list[dict]:
    """A Sequential ending in Dense(linear) + Activation(softmax|sigmoid) as one Dense with
    that activation (the same function), so the output is a Dense the wrapper can reorder."""
    if len(specs) >= 2 and _is_output_activation(specs[-1]) and _is_linear_dense(specs[-2]):
        dense = json.loads(json.dumps(specs[-2]))
        dense["config"]["activation"] = specs[-1]["config"]["activation"]
        return [*specs[:-2], dense]
    return specs


def _fold_functional_output(specs: list[dict], output: str, path: Path):
    """The functional form of ``_fold_output_activation``: (specs, output layer name)."""
    by_name = {spec.get("name"): spec for spec in specs}
    last = by_name.get(output)
    if last is None:
        raise ClassifierFileError(f"{path}: the output layer {output!r} is not in the config")
    nodes = last.get("inbound_nodes", [])
    if _is_output_activation(last) and len(nodes) == 1 and len(nodes[0]) == 1:
        source = by_name.get(nodes[0][0][0])
        readers = [spec for spec in specs for node in spec.get("inbound_nodes", [])
                   for entry in node if entry[0] == nodes[0][0][0]]
        if source is not None and _is_linear_dense(source) and len(readers) == 1:
            dense = json.loads(json.dumps(source))
            dense["config"]["activation"] = last["config"]["activation"]
            return [dense if spec is source else spec for spec in specs
                    if spec is not last], dense["name"]
    return specs, output


def _is_output_activation(spec: dict) -> bool:
    return (spec.get("class_name") == "Activation"
            and spec.get("config", {}).get("activation") in OUTPUTS)


def _is_linear_dense(spec: dict) -> bool:
    return (spec.get("class_name") == "Dense"
            and spec.get("config", {}).get("activation", "linear") == "linear")


def _input_shape(spec: dict, path: Path) -> tuple[int, ...] | None:
    config = spec.get("config", {})
    shape = config.get("batch_input_shape") or config.get("batch_shape")
    if shape is None:
        return None
    if any(size is None for size in shape[1:]):
        raise ClassifierFileError(f"{path}: layer {_name(spec)!r} takes inputs of unknown size "
                                  f"{shape}; a stamp classifier needs a fixed input size")
    return tuple(int(size) for size in shape[1:])


def _legacy_layer(spec: dict, path: Path) -> keras.layers.Layer:
    """The Keras 3 layer of one legacy layer config, or a ``ClassifierFileError`` naming it."""
    kind, config, name = spec.get("class_name"), spec.get("config", {}), _name(spec)
    if kind not in LEGACY_LAYERS:
        raise ClassifierFileError(f"{path}: layer {name!r} of class {kind!r} is not supported "
                                  f"(supported: {', '.join(sorted(LEGACY_LAYERS))})")
    if config.get("data_format", "channels_last") != "channels_last":
        raise ClassifierFileError(f"{path}: layer {name!r} uses data_format "
                                  f"{config['data_format']!r}; only channels_last is supported")
    kwargs = {"name": name}
    for key in LEGACY_LAYERS[kind]:
        # the key under its Keras 2 name where Keras 3 renamed it (LeakyReLU's alpha)
        source_key = next((old for (cls, old), new in RENAMED_KEYS.items()
                           if cls == kind and new == key and old in config), key)
        if source_key not in config:
            continue
        if config[source_key] is None and key != "max_value":  # None: Keras 3's default
            continue
        value = config[source_key]
        kwargs[key] = _tuples(value) if key in TUPLE_KEYS else value
        if key == "activation":
            try:
                keras.activations.get(value)
            except (ValueError, TypeError):
                raise ClassifierFileError(f"{path}: layer {name!r} has the activation {value!r}, "
                                          "which Keras 3 does not know") from None
    try:
        return getattr(layers, kind)(**kwargs)
    except (ValueError, TypeError) as err:
        raise ClassifierFileError(f"{path}: layer {name!r} ({kind}) cannot be rebuilt "
                                  f"({_first_line(err)})") from None


def _load_legacy_weights(model: keras.Model, group, path: Path) -> None:
    """Each layer's weights from ``group[<layer>]`` in the file's ``weight_names`` order."""
    for layer in model.layers:
        expected = layer.get_weights()
        if not expected:
            continue
        if layer.name not in group:
            raise ClassifierFileError(f"{path}: no weights for layer {layer.name!r} in the file")
        names = [_text(name) for name in group[layer.name].attrs.get("weight_names", [])]
        try:
            arrays = [np.asarray(group[layer.name][name]) for name in names]
        except (KeyError, OSError) as err:
            raise ClassifierFileError(f"{path}: weights of layer {layer.name!r} are unreadable "
                                      f"({_first_line(err)})") from None
        found, wanted = [a.shape for a in arrays], [w.shape for w in expected]
        if found != wanted:
            raise ClassifierFileError(f"{path}: layer {layer.name!r} has weights of shapes "
                                      f"{found} in the file, its config needs {wanted}")
        layer.set_weights(arrays)


def read_savedmodel(path: str | Path,
                    endpoint: str = "serving_default") -> EmbeddedSavedModel:
    """The SavedModel at ``path`` as an ``EmbeddedSavedModel`` layer: one image input of a
    fixed size (B, h, w, c) and one output (B, K), read from its ``endpoint`` signature."""
    path = Path(path)
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # noqa: BLE001  (TF raises many types for a damaged graph)
        raise ClassifierFileError(f"{path}: not a loadable SavedModel "
                                  f"({_first_line(err)})") from None
    if endpoint not in loaded.signatures:
        raise ClassifierFileError(f"{path}: the SavedModel has no {endpoint!r} signature "
                                  f"(it has {sorted(loaded.signatures)})")
    function = loaded.signatures[endpoint]
    inputs = function.structured_input_signature[1]
    outputs = function.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ClassifierFileError(f"{path}: the {endpoint!r} signature has inputs "
                                  f"{sorted(inputs)} and outputs {sorted(outputs)}; a "
                                  "classifier of stamps has one of each")
    (input_key, spec), (output_key, out_spec) = next(iter(inputs.items())), \
        next(iter(outputs.items()))
    shape = spec.shape.as_list()
    if len(shape) != 4 or any(size is None for size in shape[1:]):
        raise ClassifierFileError(f"{path}: the SavedModel takes inputs of shape {shape}; a "
                                  "stamp classifier takes (batch, height, width, channels)")
    units = out_spec.shape.as_list()
    if len(units) != 2 or units[1] is None:
        raise ClassifierFileError(f"{path}: the SavedModel's output has shape {units}; a "
                                  "classifier's is (batch, classes)")
    layer = EmbeddedSavedModel(shape[1:], units[1], input_key, output_key, endpoint,
                               name="savedmodel")
    layer.attach(path)
    return layer


# --- wrapping it for the project's stamps ----------------------------------------------

def import_classifier(path: str | Path, geometry: StampGeometry, channels, *, pad: int = 0,
                      crop: int = 0, real_index: int = 1, output: str = "softmax",
                      check_on: np.ndarray | None = None) -> tuple[keras.Model, dict]:
    """(wrapper, facts) for the classifier file at ``path``: the wrapper maps stamps of
    ``geometry`` (B, H, W, C) to (B, 2) probabilities (bogus, real); ``channels`` (names
    or indices of the stamp's channels) are what the file's model sees, in its order;
    ``pad`` zero pixels are added (or ``crop`` cut) on every side to reach its input size;
    ``real_index`` is its output index of the real class, ``output`` its output kind.

    ``check_on`` (N, H, W, C): stamps whose first 1024 the wrapper's outputs must be
    probabilities on (``check_probabilities``).

    facts: {format, sha256, file_input_shape, parameters, opaque}."""
    path = Path(path)
    if output not in OUTPUTS:
        raise ClassifierFileError(f"{path}: output must be one of {OUTPUTS}, got {output!r}")
    if real_index not in (0, 1):
        raise ClassifierFileError(f"{path}: real_index must be 0 or 1, got {real_index!r}")
    try:
        indices = geometry.channel_indices(channels)
    except ValueError as err:
        raise ClassifierFileError(f"{path}: {err}") from None
    inner, kind = read_model_file(path)
    file_shape = (inner.input_shape_ if isinstance(inner, EmbeddedSavedModel)
                  else tuple(int(s) for s in inner.input.shape[1:]))
    _check_fit(path, geometry, indices, file_shape, pad, crop)
    wrapper = _wrap(inner, geometry, indices, pad, crop, real_index, output, path)
    if check_on is not None:
        check_probabilities(wrapper, check_on[:1024], path)
    facts = {"format": kind, "sha256": file_sha256(path),
             "file_input_shape": list(file_shape), "parameters": int(wrapper.count_params()),
             "opaque": is_opaque(wrapper)}
    return wrapper, facts


def check_probabilities(model: keras.Model, stamps: np.ndarray, source: str | Path,
                        atol: float = 1e-3) -> None:
    """``ClassifierFileError`` naming ``source`` unless the wrapper's outputs on ``stamps``
    (N, H, W, C) are probabilities: finite, in [0, 1], each row summing to 1 (a model
    whose last layer gives logits, or output: softmax set for a sigmoid, fails here)."""
    if len(stamps) == 0:
        return
    outputs = np.asarray(model.predict(stamps, batch_size=1024, verbose=0), np.float64)
    if not np.isfinite(outputs).all() or outputs.min() < -atol or outputs.max() > 1 + atol \
            or np.abs(outputs.sum(axis=1) - 1).max() > atol:
        raise ClassifierFileError(
            f"{source}: the model's outputs are not probabilities (range "
            f"[{outputs.min():.3g}, {outputs.max():.3g}], row sums up to "
            f"{np.abs(outputs.sum(axis=1) - 1).max():.3g} from 1); does it end in a softmax "
            "(output: softmax) or one sigmoid unit (output: sigmoid)?")


def _check_fit(path: Path, geometry: StampGeometry, channels: tuple[int, ...],
               file_shape: tuple[int, ...], pad: int, crop: int) -> None:
    if len(file_shape) != 3:
        raise ClassifierFileError(f"{path}: the model takes inputs of shape {file_shape}; a "
                                  "stamp classifier takes (height, width, channels)")
    if pad < 0 or crop < 0 or (pad and crop):
        raise ClassifierFileError(f"{path}: pad and crop are pixels per side, >= 0, at most "
                                  f"one of them non-zero; got pad {pad}, crop {crop}")
    if file_shape[2] != len(channels):
        raise ClassifierFileError(
            f"{path}: the model takes {file_shape[2]} channel(s), the channels given are "
            f"{len(channels)} ({[geometry.channels[c] for c in channels]})")
    reached = (geometry.height + 2 * (pad - crop), geometry.width + 2 * (pad - crop))
    if reached != tuple(file_shape[:2]):
        gap = file_shape[0] - geometry.height
        hint = (f"pad {gap // 2}" if gap > 0 and gap % 2 == 0 else
                f"crop {-gap // 2}" if gap < 0 and gap % 2 == 0 else None)
        if file_shape[0] - geometry.height != file_shape[1] - geometry.width:
            hint = None
        raise ClassifierFileError(
            f"{path}: stamps of {geometry.height}x{geometry.width} with pad {pad}, crop {crop} "
            f"become {reached[0]}x{reached[1]}, the model takes {file_shape[0]}x{file_shape[1]}"
            + (f" (use {hint})" if hint else " (no symmetric pad or crop reaches it)"))


def _wrap(inner, geometry: StampGeometry, channels: tuple[int, ...], pad: int, crop: int,
          real_index: int, output: str, path: Path) -> keras.Model:
    stamps = keras.Input(geometry.shape, name="stamps")
    x = SelectChannels(channels, name="channels")(stamps)
    if pad:
        x = layers.ZeroPadding2D(pad, name="fit_input")(x)
    elif crop:
        x = layers.Cropping2D(crop, name="fit_input")(x)
    wanted = 2 if output == "softmax" else 1
    last = None if isinstance(inner, EmbeddedSavedModel) else _output_layer(inner, path)
    units = inner.output_units if last is None else int(inner.outputs[0].shape[-1])
    if units != wanted:
        raise ClassifierFileError(
            f"{path}: the model has {units} output(s); output {output!r} means {wanted} "
            f"({'a softmax pair' if wanted == 2 else 'one sigmoid unit'})")
    if isinstance(inner, EmbeddedSavedModel):
        probabilities = ClassProbabilities(output, real_index, name="probabilities")(inner(x))
    elif isinstance(last, layers.Dense) and \
            keras.activations.serialize(last.activation) == output:
        probabilities = _retrace(inner, x, {last: _reordered_dense(last, real_index, output)})
    else:
        probabilities = ClassProbabilities(output, real_index, name="probabilities")(
            _retrace(inner, x, {}))
    return keras.Model(stamps, probabilities, name="imported_classifier")


def _output_layer(inner: keras.Model, path: Path):
    """The layer making the file's model's one output; ``ClassifierFileError`` when it has
    several outputs or a layer named like one of the wrapper's own."""
    if len(inner.outputs) != 1:
        raise ClassifierFileError(f"{path}: the model has {len(inner.outputs)} outputs; a "
                                  "classifier of stamps has one")
    last = inner.outputs[0]._keras_history.operation
    clash = sorted({layer.name for layer in inner.layers if layer is not last}
                   & set(WRAPPER_NAMES))
    if clash:
        raise ClassifierFileError(f"{path}: layer name(s) {clash} are the wrapper's own "
                                  f"({', '.join(WRAPPER_NAMES)}); rename them in the model")
    return last


def _retrace(inner: keras.Model, x, replace: dict):
    """The file's layers called again on ``x`` (the same layer objects, so the same
    weights), flat in the new graph, each layer of ``replace`` swapped for its value."""
    if isinstance(inner, keras.Sequential):
        for layer in inner.layers:
            x = replace.get(layer, layer)(x)
        return x
    # Keras 3 has no public way to call a functional model's layers on new inputs without
    # nesting it; _run_through_graph is what keras.models.clone_model uses (keras is pinned,
    # and the tests re-trace a branched functional model). A nested model inside the file's
    # model stays one layer.
    return inner._run_through_graph(x, operation_fn=lambda op: replace.get(op, op))


def _reordered_dense(last: layers.Dense, real_index: int, output: str) -> layers.Dense:
    """The Dense "probabilities": softmax over (bogus, real) of ``last``'s own logits,
    reordered; a sigmoid unit's logit z becomes the pair (0, z) (the same p)."""
    kernel, *bias = last.get_weights()
    bias = bias[0] if bias else np.zeros(kernel.shape[1], kernel.dtype)
    if output == "sigmoid":
        kernel = np.concatenate([np.zeros_like(kernel), kernel], axis=1)
        bias = np.concatenate([np.zeros_like(bias), bias])
    order = [1 - real_index, real_index]
    dense = layers.Dense(2, activation="softmax", name="probabilities")
    dense.build((None, kernel.shape[0]))
    dense.set_weights([kernel[:, order], bias[order]])
    return dense


def _tuples(value):
    """Lists, nested or not, as tuples (Keras 2 configs wrote tuples as JSON lists)."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def _name(spec: dict) -> str:
    return spec.get("name") or spec.get("config", {}).get("name", "?")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

"""SavedModel export in TF Serving's layout `BASE/NAME/VERSION/`, written to a temporary folder and renamed.

The SavedModel holds the EMA weights and the signatures of
`export_signatures.ServingModule` (`generate_<sampler>` for every exported
sampler, `generate` = `serving_default` for the default one, `denoise`),
plus `assets.extra/` (ignored by SavedModel loaders): TF Serving's warm-up
requests and `tfdiffusion.json`, the model's description for
`serving.load_saved_model`. It loads with plain `tf.saved_model.load` in a
process that never imports tfdiffusion or Keras.
"""

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from tfdiffusion import files
from tfdiffusion import samplers as samplers_lib
from tfdiffusion import validation
from tfdiffusion import warmup
from tfdiffusion.export_signatures import ServingModule
from tfdiffusion.model import DiffusionModel
from tfdiffusion.export_signatures import example_inputs
from tfdiffusion.export_signatures import generate_input_specs
from tfdiffusion.export_signatures import request_values
from tfdiffusion.export_signatures import signature_name

__all__ = ["DEFAULT_MAX_IMAGES", "METADATA_FILE", "export_onnx", "export_saved_model",
           "remove_stale_working_folders", "resolve_version_dir", "split_version_path"]

# The description of an exported model, relative to its version directory.
METADATA_FILE = "assets.extra/tfdiffusion.json"
METADATA_FORMAT = "tfdiffusion-saved-model"
DEFAULT_MAX_IMAGES = 16
_VERSION = re.compile(r"^[0-9]+$")


def split_version_path(path: str, version: Optional[int] = None) -> Tuple[str, Optional[int]]:
    """`(BASE/NAME, version)` from `BASE/NAME` (version as given) or `BASE/NAME/VERSION`.

    Raises:
        ValueError: the path ends in a version and a different `version` is given.
    """
    path = os.path.normpath(os.fspath(path))
    head, tail = os.path.split(path)
    if _VERSION.match(tail) and head:
        if version is not None and int(tail) != version:
            raise ValueError(f"`path` {path!r} ends in version {int(tail)} but version={version} was given; "
                             "give BASE/NAME with `version`, or BASE/NAME/VERSION alone")
        return head, int(tail)
    return path, version


def existing_versions(model_dir: str) -> List[int]:
    """The integer version directories in `model_dir` (what TF Serving would serve), ascending."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(name) for name in os.listdir(model_dir)
                  if _VERSION.match(name) and os.path.isdir(os.path.join(model_dir, name)))


def resolve_version_dir(path: str) -> str:
    """A version directory: `path` itself if it holds `saved_model.pb`, else its highest version holding one.

    Raises:
        FileNotFoundError: no SavedModel there.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = [v for v in existing_versions(path) if os.path.isfile(os.path.join(path, str(v), "saved_model.pb"))]
    if not versions:
        raise FileNotFoundError(f"{path!r} holds no SavedModel: expected a version directory with "
                                "saved_model.pb, or a model directory BASE/NAME with integer version folders")
    return os.path.join(path, str(versions[-1]))


def _check_spacing(samplers: Sequence[str], spacing: str) -> None:
    """Refuses a spacing some exported sampler cannot use (e.g. "karras" for "ddim"), naming them."""
    validation.check_choice("spacing", spacing, samplers_lib.SOLVER_SPACINGS)
    refusing = [name for name in samplers if spacing not in samplers_lib.get_sampler(name).spacings]
    if refusing:
        able = [name for name in samplers_lib.sampler_names() if spacing in samplers_lib.get_sampler(name).spacings]
        raise ValueError(f"spacing={spacing!r} applies to the samplers {', '.join(able)} only; the export "
                         f"includes {', '.join(refusing)}. Export those separately (`samplers`) or choose "
                         f"another spacing.")


def _check_arguments(model, samplers, default_sampler, max_images, jit_compile, overwrite):
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"`model` must be a tfdiffusion DiffusionModel. Received: {type(model).__name__}")
    if isinstance(samplers, str):
        raise TypeError(f"`samplers` must be a sequence of sampler names, not one string. Received: "
                        f"samplers={samplers!r} (write [{samplers!r}])")
    names = samplers_lib.sampler_names() if samplers is None else tuple(samplers)
    if not names:
        raise ValueError("`samplers` must name at least one sampler. Received: samplers=()")
    for name in names:
        validation.check_choice("samplers", name, samplers_lib.sampler_names())
    default_sampler = validation.check_choice("default_sampler", default_sampler, names)
    max_images = validation.check_int("max_images", max_images, 1, 4096)
    validation.check_bool("jit_compile", jit_compile)
    validation.check_bool("overwrite", overwrite)
    return tuple(dict.fromkeys(names)), default_sampler, max_images


def _metadata(model, module: ServingModule, default_sampler: str, spacing: str, clip_denoised: bool,
              jit_compile: bool, threshold: Optional[float]) -> Dict[str, Any]:
    try:
        version = importlib.metadata.version("tfdiffusion")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        version = None
    samplers = {}
    for name, image_sampler in module.image_samplers.items():
        samplers[name] = dict(signature=signature_name(name), options=dict(image_sampler.sampler.options),
                              min_steps=image_sampler.sampler.min_steps)
    return dict(format=METADATA_FORMAT, format_version=1, tfdiffusion_version=version,
                image_shape=list(module.image_shape), num_classes=model.num_classes,
                null_label=model.null_label, num_timesteps=module.num_timesteps, max_images=module.max_images,
                default_sampler=default_sampler, samplers=samplers, spacing=spacing,
                clip_denoised=clip_denoised, threshold=threshold, jit_compile=jit_compile,
                model_mean_type=model.diffusion.model_mean_type, model_var_type=model.diffusion.model_var_type,
                label_dropout=model.label_dropout)


def _warmup_requests(module: ServingModule, default_sampler: str):
    """One request per signature and batch size {1, max_images}, with the sampler's fewest steps (1 for most):
    cheap, every shape compiled."""
    conditional = module.num_classes is not None
    requests = []
    for name, image_sampler in module.image_samplers.items():
        specs = generate_input_specs(conditional, image_sampler.option_names)
        signatures = [signature_name(name)] + (["generate", "serving_default"] if name == default_sampler else [])
        for batch in sorted({1, module.max_images}):
            values = example_inputs(specs, request_values(conditional, image_sampler.sampler.options, batch,
                                                          image_sampler.sampler.min_steps))
            requests += [(signature, values) for signature in signatures]
    requests.append(("denoise", module.denoise_example(1)))
    return requests


# The hidden folders an export works in: `.VERSION.XXXXXXXX.tmp` (the version being written) and
# `.VERSION.XXXXXXXX.old` (a replaced version being removed), XXXXXXXX from `tempfile.mkdtemp`.
_WORKING_FOLDER = re.compile(r"^\.[0-9]+\.[a-z0-9_]{8}\.(tmp|old)$")


def _lock(path: str, blocking: bool) -> Optional[int]:
    """An open descriptor of the folder `path` holding an exclusive `flock` on it, or None.

    The lock lives as long as the descriptor, and the kernel drops it when the
    process dies (SIGKILL included): a working folder whose lock can be taken
    belongs to no running export. None: `blocking` is False and another
    process holds the lock, or the platform has no `flock` (then none is taken).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locks, and no folder is ever taken for stale
        return None
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:  # held by a running export (BlockingIOError), or locks unsupported here
        os.close(descriptor)
        return None
    return descriptor


def _locked_working_folder(model_dir: str, version: int, suffix: str) -> Tuple[str, Optional[int]]:
    """A new working folder and the lock that marks its export as running.

    Another export may take the lock between `mkdtemp` and `flock` (the new
    folder is not locked yet) and remove the folder: then it is made again.
    """
    while True:
        folder = tempfile.mkdtemp(prefix=f".{version}.", suffix=suffix, dir=model_dir)
        lock = None
        try:
            lock = _lock(folder, blocking=True)
            if lock is None or os.path.samestat(os.fstat(lock), os.stat(folder)):
                return folder, lock
        except FileNotFoundError:  # removed before it was locked
            pass
        if lock is not None:
            os.close(lock)


def remove_stale_working_folders(model_dir: str) -> List[str]:
    """Removes the working folders of exports that died (killed mid-export) from `model_dir`; returns their names.

    A folder counts as stale when its name is an export's working folder
    (`.VERSION.XXXXXXXX.tmp` or `.old`) and no process holds its lock: a
    running export (in any process on this machine) keeps its own. Without
    `flock` (not POSIX) nothing is removed.
    """
    removed = []
    for name in sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []:
        path = os.path.join(model_dir, name)
        if not _WORKING_FOLDER.match(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        lock = _lock(path, blocking=False)
        if lock is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(lock)
        removed.append(name)
    return removed


@contextlib.contextmanager
def _temporary_version_dir(model_dir: str, version: int):
    """A hidden folder beside the versions (TF Serving only serves integer names), locked while the export
    runs and removed on failure (a killed export's is removed by the next export)."""
    tmp, lock = _locked_working_folder(model_dir, version, ".tmp")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def export_saved_model(model, path: str, version: Optional[int] = None,
                       max_images: int = DEFAULT_MAX_IMAGES, samplers: Optional[Sequence[str]] = None,
                       default_sampler: str = "ddim", spacing: Optional[str] = None,
                       clip_denoised: Optional[bool] = None, jit_compile: bool = False,
                       overwrite: bool = False, warmup_requests: bool = True,
                       threshold: Optional[float] = None) -> str:
    """Exports a `DiffusionModel`'s EMA network as a servable SavedModel in `BASE/NAME/VERSION/`.

    The version is written to a hidden temporary folder in `BASE/NAME/` and
    renamed into place when complete, so a server watching `BASE/NAME`
    never sees a half-written version (a killed export leaves only a
    hidden `.VERSION.*.tmp` folder, which TF Serving ignores, and which the
    next export into `BASE/NAME` removes: see `remove_stale_working_folders`).

    Args:
        model: the `DiffusionModel`.
        path: the model directory `BASE/NAME` (TF Serving's `--model_base_path`),
            or `BASE/NAME/VERSION` with an integer VERSION.
        version: the integer version (default: one above the highest
            existing version, or 1).
        max_images: the largest batch a request may ask for, in [1, 4096]:
            requests above it fail before any work.
        samplers: sampler names to export, one `generate_<name>` signature
            each (default: every registered sampler).
        default_sampler: the sampler of `generate` and `serving_default`.
        spacing: timestep spacing of every exported sampler (default: the
            model's); "karras" only for samplers that take it (the
            DPM-Solver++ and EDM families).
        clip_denoised: clip each predicted x_0 (default: the model's).
        jit_compile: compile the sampling loops with XLA. TF Serving's CPU
            model server runs XLA only with `--xla_cpu_compilation_enabled`;
            without it such a model fails at its first request.
        overwrite: replace an existing version (default: refuse).
        warmup_requests: write `assets.extra/tf_serving_warmup_requests`.
        threshold: dynamic thresholding percentile in (0, 1] of each
            predicted x_0 in every exported sampler (see
            `DiffusionModel.generate`); None: off.

    Returns:
        The version directory written.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
        TypeError, ValueError: a bad argument (before anything is written).
    """
    samplers, default_sampler, max_images = _check_arguments(model, samplers, default_sampler, max_images,
                                                             jit_compile, overwrite)
    model_dir, version = split_version_path(path, version)
    if version is not None:
        version = validation.check_int("version", version, 0)
    spacing = model.spacing if spacing is None else spacing
    _check_spacing(samplers, spacing)
    clip_denoised = model.clip_denoised if clip_denoised is None else validation.check_bool(
        "clip_denoised", clip_denoised)
    threshold = samplers_lib.check_threshold(threshold)
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"`path` {model_dir!r} is a file; expected a model directory BASE/NAME")
    if version is None:
        version = (existing_versions(model_dir) or [0])[-1] + 1
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"Version {version} already exists at {final!r}; choose another `version` "
                              "or pass overwrite=True to replace it")
    module = ServingModule(model, samplers, max_images, spacing, clip_denoised, jit_compile, threshold)
    signatures = module.signatures(default_sampler)  # traced before anything is written
    remove_stale_working_folders(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    with _temporary_version_dir(model_dir, version) as tmp:
        # No gradient functions: serving never differentiates, and tracing them (tf.nn.silu's custom
        # gradient in every block) would take most of the export's time.
        tf.saved_model.save(module, tmp, signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w") as file:
            json.dump(_metadata(model, module, default_sampler, spacing, clip_denoised, jit_compile, threshold),
                      file,
                      indent=2)
        if warmup_requests:
            warmup.write_warmup_requests(os.path.join(tmp, warmup.WARMUP_FILE),
                                         os.path.basename(os.path.abspath(model_dir)),
                                         _warmup_requests(module, default_sampler))
        os.chmod(tmp, 0o777 & ~_umask())
        _move_into_place(tmp, final, model_dir, version)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(tmp: str, final: str, model_dir: str, version: int) -> None:
    """Renames `tmp` to `final`; an existing `final` (overwrite) is moved aside first, then removed."""
    old = lock = None
    if os.path.exists(final):
        old, lock = _locked_working_folder(model_dir, version, ".old")
        os.rename(final, os.path.join(old, "previous"))
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def export_onnx(model, path: str, overwrite: bool = False) -> str:
    """Writes the EMA denoising network as an ONNX model (for ONNX Runtime, TensorRT), atomically.

    The ONNX model is the network alone, for clients that run their own
    sampler: inputs `x_t` float32 `[N, H, W, C]`, `t` int32 `[N]` (the
    trained process's timesteps) and, for a class-conditional network,
    `labels` int32 `[N]` (the null label `num_classes` for the unconditional
    half of guidance); output the network's prediction `[N, H, W, C]` (2C
    channels with learned variances). Converted by Keras' `export(...,
    format="onnx")` with tf2onnx.

    Args:
        model: the `DiffusionModel`.
        path: the `.onnx` file to write.
        overwrite: replace an existing file (default: refuse).

    Returns:
        `path`.

    Raises:
        ImportError: tf2onnx is not installed (`pip install "tfdiffusion[onnx]"`).
        FileExistsError: `path` exists and `overwrite` is False.
    """
    _check_arguments(model, None, "ddim", 1, False, overwrite)
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it")
    if importlib.util.find_spec("tf2onnx") is None:  # Keras' ONNX export converts with it
        raise ImportError('ONNX export needs tf2onnx: pip install "tfdiffusion[onnx]"')
    specs = [tf.TensorSpec((None,) + tuple(model.image_shape), tf.float32, name="x_t"),
             tf.TensorSpec([None], tf.int32, name="t")]
    if model.num_classes is not None:
        specs.append(tf.TensorSpec([None], tf.int32, name="labels"))
    with files.atomic_output(path) as tmp:
        model.ema_network.export(tmp, format="onnx", input_signature=specs, verbose=False)
    return path

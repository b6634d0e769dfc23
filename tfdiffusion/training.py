"""A training run: settings from a preset, the run folder, checkpoints and resume, fit, samples and summary.

`train(output_dir, ...)` is what `tfdiffusion train` runs; Python users call
it the same way. A run folder holds:

    model.keras              the trained model (weights, EMA, optimizer state)
    samples.png              a sample grid; samples_large.png enlarged
    train_summary.json       what was trained and measured
    checkpoints/ckpt.keras   the whole model, every epoch and `checkpoint_every` steps
    checkpoints/run.json     the run's settings, for --resume
    logs/                    TensorBoard

run.json records an image-folder data set and `data_dir` as real paths
(absolute, links resolved), so a run resumes from any directory and under
any spelling of the same folder; "shapes" and TFDS names stay names. A run
folder must lie apart from the data it reads (neither inside the other,
under any spelling).

A resumed run continues the step counter, learning-rate schedule, EMA and
optimizer state from the checkpoint; a run killed before it finished is
resumed by the same command (preemption-safe), `--resume` continues a
finished one to more steps. It does not replay the data: its
pipeline is reseeded with the step it resumes at, so it continues with a
fresh shuffle order.
"""

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Optional

import keras
import numpy as np

from tfdiffusion import callbacks
from tfdiffusion import data
from tfdiffusion import distribute
from tfdiffusion import files
from tfdiffusion import images
from tfdiffusion import paths
from tfdiffusion import presets
from tfdiffusion import samplers
from tfdiffusion import sampling
from tfdiffusion import validation
from tfdiffusion.loading import MODEL_FILE
from tfdiffusion.loading import load_model

__all__ = ["RunError", "TrainSettings", "grid_layout", "train", "write_json"]

SAMPLES_FILE = "samples.png"
SAMPLES_LARGE_FILE = "samples_large.png"
SUMMARY_FILE = "train_summary.json"
CHECKPOINT_FILE = os.path.join("checkpoints", "ckpt.keras")
RUN_FILE = os.path.join("checkpoints", "run.json")
LOG_DIR = "logs"
MAX_STEPS_PER_EPOCH = 500
PROGRESS_DIR = "progress"
PROGRESS_IMAGES = 16
DEFAULT_NUM_SAMPLES = 64

# What a resumed run cannot change: its weights, optimizer and data were made with these.
FIXED_ON_RESUME = ("preset", "dataset", "data_dir", "image_size", "batch_size", "learning_rate",
                   "num_timesteps", "seed", "mixed_precision")
# `keras.utils.set_random_seed` seeds numpy's generator, which takes seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1
_APART = "a run folder and the data it reads must lie apart, or the run's files would mix with the data"


class RunError(ValueError):
    """A problem with the run folder or its settings that the user can fix."""


@dataclasses.dataclass
class TrainSettings:
    """The settings of a training run; None means "the preset's" (or the resumed run's).

    Attributes:
        preset: a name from `presets.PRESETS`.
        dataset: "shapes", a TFDS name or an image folder (`data.load_dataset`
            decides which, in that order); a folder is recorded as its real path.
        data_dir: where TFDS data lives (recorded as its real path).
        image_size, batch_size, learning_rate, num_timesteps: as the preset's fields.
        steps: training steps in total (a resumed run continues up to it).
        epochs: passes over the data instead of `steps`.
        seed: weight initialisation, data order and sample noise, in [0, 2**32 - 1].
        sampler, sample_steps, num_samples, guidance_scale: the sample grid.
        checkpoint_every: save a checkpoint every this many steps (besides every epoch).
        sample_every: draw a fixed-seed grid (progress/samples_stepNNNNNNN.png and
            TensorBoard) every this many epochs, the last excepted; 0: never.
        jit_compile: compile training and sampling with XLA (None: yes; per
            replica under several replicas, see `DiffusionModel`).
        strategy: a `distribute.STRATEGIES` name (None: "auto"); may differ
            on resume (a run moves between machines).
        mixed_precision: a `distribute.PRECISIONS` name (None: "fp32"); fixed
            for a run (the optimizer state depends on it).
        skip_unreadable: leave out unreadable files of an image-folder data set
            (None/False: refuse the folder, naming them).
        gradient_checkpointing: recompute the UNet's ResBlock activations in
            the backward pass (less memory, slower steps; `UNet`'s option).
            None: the resumed run's, else off; may change on resume.
    """

    preset: Optional[str] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    num_timesteps: Optional[int] = None
    steps: Optional[int] = None
    epochs: Optional[int] = None
    seed: Optional[int] = None
    sampler: Optional[str] = None
    sample_steps: Optional[int] = None
    num_samples: Optional[int] = None
    guidance_scale: Optional[float] = None
    checkpoint_every: Optional[int] = None
    sample_every: Optional[int] = None
    jit_compile: Optional[bool] = None
    skip_unreadable: Optional[bool] = None
    strategy: Optional[str] = None
    mixed_precision: Optional[str] = None
    gradient_checkpointing: Optional[bool] = None

    def given(self) -> Dict[str, Any]:
        """The settings that were set (not None)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _check_settings(settings: Dict[str, Any]) -> None:
    checks = dict(image_size=1, batch_size=1, num_timesteps=2, steps=1, epochs=1, sample_steps=1,
                  num_samples=1, checkpoint_every=1, sample_every=0)
    for key, minimum in checks.items():
        if settings.get(key) is not None:
            validation.check_int(key, settings[key], minimum)
    if settings.get("seed") is not None:
        validation.check_int("seed", settings["seed"], 0, MAX_SEED)
    for key in ("dataset", "data_dir"):
        value = settings.get(key)
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
            raise TypeError(f"`{key}` must be a non-empty string or path. Received: {key}={value!r}")
    if settings.get("learning_rate") is not None:
        validation.check_number("learning_rate", settings["learning_rate"], 0.0, min_inclusive=False)
    if settings.get("guidance_scale") is not None:
        validation.check_number("guidance_scale", settings["guidance_scale"])
    if settings.get("sampler") is not None:
        validation.check_choice("sampler", settings["sampler"], samplers.sampler_names())
    if settings.get("strategy") is not None:
        validation.check_choice("strategy", settings["strategy"], distribute.STRATEGIES)
    if settings.get("mixed_precision") is not None:
        validation.check_choice("mixed_precision", settings["mixed_precision"], tuple(distribute.PRECISIONS))
    for flag in ("jit_compile", "skip_unreadable", "gradient_checkpointing"):
        if settings.get(flag) is not None:
            validation.check_bool(flag, settings[flag])


def resolve_settings(given: Dict[str, Any], saved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The run's settings: given ones, else the resumed run's, else the preset's.

    Raises:
        RunError: a resumed run asked to change a setting it cannot change.
    """
    _check_settings(given)
    saved = dict(saved or {})
    if saved:
        changed = [f"{key}: run {saved.get(key)!r}, requested {given[key]!r}" for key in FIXED_ON_RESUME
                   if key in given and given[key] != saved.get(key)]
        if changed:
            raise RunError("cannot `resume` with different settings (" + "; ".join(changed) + "): the "
                           "checkpoint's weights, optimizer and data were made with the run's; start a new "
                           "run in another folder to change them")
    settings = {**saved, **given}
    if given.get("epochs") is not None:
        settings.pop("steps", None)
    preset = presets.get_preset(settings.get("preset") or "shapes")
    explicit_sample_steps = "sample_steps" in settings
    defaults = dict(preset=preset.name, dataset=preset.dataset, data_dir=None, image_size=preset.image_size,
                    batch_size=preset.batch_size, learning_rate=preset.learning_rate,
                    num_timesteps=preset.num_timesteps, steps=None if settings.get("epochs") else preset.train_steps,
                    epochs=None, seed=0, sampler=preset.sampler, sample_steps=preset.sample_steps,
                    num_samples=DEFAULT_NUM_SAMPLES, guidance_scale=preset.guidance_scale, checkpoint_every=None, sample_every=1,
                    jit_compile=None, skip_unreadable=False, strategy="auto", mixed_precision="fp32",
                    gradient_checkpointing=False)
    settings = {**defaults, **{k: v for k, v in settings.items() if v is not None}}
    if not explicit_sample_steps:
        settings["sample_steps"] = min(settings["sample_steps"], settings["num_timesteps"])
    elif settings["sample_steps"] > settings["num_timesteps"]:
        raise RunError(f"`sample_steps` must be at most the number of diffusion steps "
                       f"T={settings['num_timesteps']}. Received: sample_steps={settings['sample_steps']}")
    if saved and preset.decay_to_zero and given.get("steps") not in (None, saved.get("steps")):
        raise RunError(f"cannot `resume` with `steps` {given['steps']} (the run has {saved.get('steps')}): the "
                       f"{preset.name!r} preset's learning rate decays to 0 at the run's last step, which "
                       "the checkpoint's schedule fixes")
    return settings


def grid_layout(num_images: int, num_classes: Optional[int]):
    """Default labels and grid columns: one row per class for a conditional model.

    Returns:
        `(labels, columns)`: labels int32 `[num_images]` (None if
        unconditional), `columns` images per grid row.
    """
    if num_classes is None:
        return None, math.ceil(math.sqrt(num_images))
    columns = max(1, math.ceil(num_images / num_classes))
    return (np.arange(num_images) // columns % num_classes).astype(np.int32), columns


def write_json(path: str, payload: Any) -> None:
    """Writes `payload` as strict JSON (no NaN), atomically."""
    text = json.dumps(payload, indent=2, allow_nan=False)
    with files.atomic_output(path) as tmp:
        with open(tmp, "w") as file:
            file.write(text + "\n")


def _float_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _recorded_dataset(name: str):
    """`(name as run.json records it, kind)`: "shapes" and TFDS names as given, an image folder
    (`data.dataset_kind`, read in the current directory) as its real path."""
    name = os.fspath(name)
    kind = data.dataset_kind(name)
    return (paths.real_path(name) if kind == "folder" else name), kind


def _given_paths(given: Dict[str, Any]) -> Dict[str, Any]:
    """The given `dataset` and `data_dir` as run.json records them (see `_recorded_dataset`)."""
    given = dict(given)
    if given.get("dataset") is not None:
        given["dataset"] = _recorded_dataset(given["dataset"])[0]
    if given.get("data_dir") is not None:
        given["data_dir"] = paths.real_path(given["data_dir"])
    return given


def _saved_paths(saved: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """The resumed run's `dataset` and `data_dir` as this version records them.

    A run.json with `dataset_kind` holds real paths already. One written by
    an earlier version holds the paths as they were given, relative to the
    directory that run was started in, which it did not record: they are
    read relative to the current directory (where the earlier version read
    them too), and the run.json is rewritten with the real paths.

    Raises:
        RunError: the run trained on a TFDS data set whose name is also a
            folder in the current directory (which would be read instead).
    """
    saved = dict(saved)
    if saved.get("dataset_kind") is not None:
        if saved["dataset_kind"] == "tfds" and data.dataset_kind(saved["dataset"]) == "folder":
            raise RunError(f"cannot `resume`: the run trained on the TFDS data set {saved['dataset']!r}, but "
                           f"{saved['dataset']!r} is also a path in the current directory {os.getcwd()!r}, which "
                           "would be read instead; resume from another directory")
        return saved
    for key, resolve in (("dataset", lambda value: _recorded_dataset(value)[0]), ("data_dir", paths.real_path)):
        if saved.get(key) is not None and resolve(saved[key]) != saved[key]:
            log(f"The run's settings (written by an earlier version) give `{key}` {saved[key]!r} relative to "
                f"the directory it was started in; reading it relative to the current one: {resolve(saved[key])!r}")
            saved[key] = resolve(saved[key])
    return saved


def _check_apart(out: str, resolved: Dict[str, Any], settings: "TrainSettings") -> None:
    """Refuses a run folder inside the data it reads (or holding it), under any spelling.

    An image folder is read through the links inside it, so the folders they
    lead to count too; a TFDS `data_dir` receives downloads."""
    try:
        if resolved["dataset_kind"] == "folder":
            shown = settings.dataset if settings.dataset is not None else resolved["dataset"]
            paths.check_apart(out, "output_dir", shown, "dataset", _APART,
                              inputs=paths.reachable_folders(resolved["dataset"]))
        if resolved["dataset_kind"] == "tfds" and resolved.get("data_dir") is not None:
            shown = settings.data_dir if settings.data_dir is not None else resolved["data_dir"]
            paths.check_apart(out, "output_dir", shown, "data_dir", _APART)
    except ValueError as error:
        raise RunError(str(error)) from None


def _check_sample_grid(model, num_samples: int, guidance_scale: float) -> None:
    """Refuses, before training, a sample grid that cannot be drawn (in one batch) after it."""
    try:
        sampling.check_sampling_memory(model.ema_network, model.image_shape, num_samples, num_samples,
                                       guided=model.num_classes is not None and guidance_scale != 1.0,
                                       num_images_name="num_samples", batch_size_name="num_samples")
    except ValueError as error:
        raise RunError(f"the sample grid drawn after training: {error}") from None


def _tensorboard(log_dir, log):
    if importlib.util.find_spec("tensorboard") is None:
        log(f"TensorBoard is not installed (pip install tensorboard): no logs are written to {log_dir}")
        return []
    return [keras.callbacks.TensorBoard(log_dir)]


def _progress_grid(settings, model, out, total, chief):
    """The `SampleGrid` callback of a run: 16 images every `sample_every` epochs (none with 0).

    Every worker of a cluster samples (the sampling is collective); the chief writes."""
    every = settings.get("sample_every", 1)
    if not every:
        return []
    labels, columns = grid_layout(PROGRESS_IMAGES, model.num_classes)
    return [callbacks.SampleGrid(
        os.path.join(out, PROGRESS_DIR) if chief else tempfile.mkdtemp(prefix="tfdiffusion-progress-"),
        num_images=PROGRESS_IMAGES, every_epochs=every, sampler=settings["sampler"],
        num_steps=settings["sample_steps"], guidance_scale=settings["guidance_scale"] if model.num_classes else 1.0,
        seed=settings["seed"], labels=labels, columns=columns,
        log_dir=os.path.join(out, LOG_DIR) if chief and importlib.util.find_spec("tensorboard") else None,
        skip_from_step=total)]


def _prepare_folder(out: str, resume: bool) -> bool:
    """Checks the run folder for a new run or a resume; returns True when it was created here."""
    checkpoint = os.path.join(out, CHECKPOINT_FILE)
    if resume and not os.path.isfile(checkpoint):
        raise RunError(f"cannot `resume`: {checkpoint!r} does not exist")
    if not resume and any(os.path.exists(os.path.join(out, f)) for f in (CHECKPOINT_FILE, MODEL_FILE)):
        raise RunError(f"`output_dir` {out!r} already holds a training run; pass `resume` to continue it, "
                       "or choose another folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"`output_dir` {out!r} is a file")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise RunError(f"cannot write to `output_dir` {out!r}: {error.strerror or error}") from None
    for folder in (out, os.path.dirname(checkpoint)):
        if os.path.isdir(folder):
            callbacks.remove_stale_temp_files(folder)
    return created


def _build_model(settings, preset, dataset, resumed):
    """A new compiled model for the preset, or the resumed one checked against the settings."""
    num_classes = dataset.num_classes if preset.conditional else None
    image_shape = (dataset.image_size, dataset.image_size, dataset.channels)
    jit = True if settings["jit_compile"] is None else settings["jit_compile"]
    if resumed is not None:
        model = resumed
        found = dict(image_shape=tuple(model.image_shape), num_classes=model.num_classes,
                     num_timesteps=model.diffusion.num_timesteps)
        wanted = dict(image_shape=image_shape, num_classes=num_classes, num_timesteps=settings["num_timesteps"])
        differ = [f"{k}: checkpoint {found[k]}, settings/data {wanted[k]}" for k in found if found[k] != wanted[k]]
        if differ:
            raise RunError("cannot `resume`: the checkpoint's model differs from the requested one ("
                           + "; ".join(differ) + ")")
        if model.optimizer is None:
            raise RunError("cannot `resume`: the checkpoint holds no optimizer state")
        model.jit_compile = jit
        model.network.gradient_checkpointing = settings["gradient_checkpointing"]
        return model
    # train_steps: where a decaying learning-rate schedule reaches 0.
    preset = dataclasses.replace(preset, learning_rate=settings["learning_rate"],
                                 num_timesteps=settings["num_timesteps"], train_steps=settings["steps"],
                                 unet={**preset.unet, "gradient_checkpointing": settings["gradient_checkpointing"]})
    model = presets.build_model(preset, num_classes=num_classes, image_size=image_shape[0],
                                channels=image_shape[-1], seed=settings["seed"])
    # XLA trains 2-3x faster than plain graphs on CPU (benchmarks/README.md);
    # Keras' "auto" would switch it off on CPU-only machines.
    model.compile(optimizer=presets.make_optimizer(preset), jit_compile=jit)
    return model


def train(output_dir: str, settings: Optional[TrainSettings] = None, resume: bool = False,
          log: Callable[[str], None] = print, verbose: int = 2) -> Dict[str, Any]:
    """Trains (or resumes) a run in `output_dir` and writes model, samples, summary, checkpoints, logs.

    Args:
        output_dir: the run folder; created if missing. A new run refuses a
            folder that holds a finished run; `resume=True` continues it. A
            run that was killed before it finished (a checkpoint, no summary)
            is continued by the same call, with or without `resume`.
        settings: `TrainSettings`; unset fields come from the resumed run,
            else from the preset.
        resume: continue the run in `output_dir` from its checkpoint.
        log: where progress lines go.
        verbose: Keras `fit` verbosity.

    Returns:
        The summary written to train_summary.json.

    Raises:
        RunError: the folder, the settings or the resume request is wrong (a
            run folder inside the data it reads, or holding it, under any
            spelling; a sample grid that cannot be drawn).
        ValueError: a setting or the data set is invalid (raised before training).
        TypeError: `output_dir`, `dataset` or `data_dir` is not a non-empty path,
            or a setting has the wrong type.
    """
    begin = time.time()
    if not isinstance(output_dir, (str, os.PathLike)) or not os.fspath(output_dir):
        raise TypeError(f"`output_dir` must be a non-empty folder path. Received: output_dir={output_dir!r}")
    out = os.fspath(output_dir)
    settings = settings or TrainSettings()
    checkpoint, run_file = os.path.join(out, CHECKPOINT_FILE), os.path.join(out, RUN_FILE)
    if not resume and os.path.isfile(checkpoint) and not os.path.isfile(os.path.join(out, SUMMARY_FILE)):
        # Killed (preempted) before it finished: the same command continues it.
        resume = True
        log(f"Resuming the interrupted run in {out} from its last checkpoint")
    saved = None
    if resume and os.path.isfile(run_file):
        with open(run_file) as file:
            saved = _saved_paths(json.load(file), log)
    _check_settings(settings.given())
    resolved = resolve_settings(_given_paths(settings.given()), saved)
    # Also the preset's default name, which a folder of that name in the current directory would shadow.
    resolved["dataset"], resolved["dataset_kind"] = _recorded_dataset(resolved["dataset"])
    preset = presets.get_preset(resolved["preset"])
    _check_apart(out, resolved, settings)
    # The strategy first: a multi-worker one must exist before TensorFlow runs anything else.
    strategy = distribute.get_strategy(resolved["strategy"], log=log)
    distribute.check_global_batch(resolved["batch_size"], strategy)
    chief = distribute.is_chief(strategy)
    previous_policy = keras.mixed_precision.global_policy()
    distribute.set_precision(resolved["mixed_precision"])
    try:
        created = _prepare_folder(out, resume)
        try:
            keras.utils.set_random_seed(resolved["seed"])
            with strategy.scope():
                resumed = load_model(checkpoint, compile=True) if resume else None
            dataset = data.load_dataset(
                resolved["dataset"], None, resolved["image_size"], resolved["batch_size"], training=True,
                channels=preset.channels, with_labels=None if preset.conditional else False,
                data_dir=resolved["data_dir"], seed=resolved["seed"],
                skip_unreadable=resolved["skip_unreadable"])
            if dataset.num_skipped:
                log(f"Skipped {dataset.num_skipped} unreadable image file(s) of {resolved['dataset']!r}")
            if resolved.get("epochs") is not None and resolved.get("steps") is None:
                if not dataset.num_examples:
                    raise RunError(f"`epochs` needs the size of data set {resolved['dataset']!r}, which is unknown; "
                                   "give `steps` instead")
                resolved["steps"] = resolved["epochs"] * (dataset.num_examples // resolved["batch_size"])
            # One Keras epoch (a progress line, a checkpoint): a pass over the data with
            # `epochs`, else at most MAX_STEPS_PER_EPOCH steps; a resumed run keeps its epochs.
            steps_per_epoch = resolved.get("steps_per_epoch")
            if not steps_per_epoch:
                total = resolved["steps"]
                steps_per_epoch = (dataset.num_examples // resolved["batch_size"] if resolved.get("epochs")
                                   else math.ceil(total / math.ceil(total / MAX_STEPS_PER_EPOCH)))
            resolved["steps_per_epoch"] = int(steps_per_epoch)
            with strategy.scope():
                model = _build_model(resolved, preset, dataset, resumed)
            _check_sample_grid(model, resolved["num_samples"],
                               resolved["guidance_scale"] if model.num_classes else 1.0)
        except BaseException:
            if created:  # Leave nothing behind when failing before training.
                shutil.rmtree(out, ignore_errors=True)
            raise
        os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
        if not chief:
            log("This process is not the cluster's chief: it trains and samples with the others, and the "
                "chief writes the files")
        if chief:  # the other workers of a cluster train and sample alongside, and write nothing
            write_json(run_file, {k: v for k, v in resolved.items() if k not in ("jit_compile", "strategy")})

        total, done = resolved["steps"], callbacks.optimizer_step(model)
        shape = "x".join(map(str, model.image_shape))
        classes = f"{dataset.num_classes} classes" if model.num_classes else "unconditional"
        log(f"Training preset {preset.name!r} on {resolved['dataset']} ({shape}, {classes}): steps {done} -> {total}, "
            f"batch {resolved['batch_size']}, lr {resolved['learning_rate']:g}, T={resolved['num_timesteps']}; "
            f"writing to {out}")
        history, fit_seconds = {}, 0.0
        if done < total:
            fit_begin = time.time()
            # The data continue where the checkpoint left them: the same order, `done` batches on.
            history = model.fit(
                dataset.batches.repeat().skip(done), steps_per_epoch=steps_per_epoch,
                epochs=math.ceil(total / steps_per_epoch), initial_epoch=done // steps_per_epoch, shuffle=False,
                verbose=verbose,
                callbacks=[callbacks.StopAtStep(total)]
                + ([callbacks.AtomicCheckpoint(checkpoint, resolved.get("checkpoint_every"))]
                   + _tensorboard(os.path.join(out, LOG_DIR), log) if chief else [])
                + _progress_grid(resolved, model, out, total, chief)).history
            fit_seconds = time.time() - fit_begin
        else:
            log(f"The checkpoint has already been trained {done} steps (>= {total}); not training.")

        model_path = os.path.join(out, MODEL_FILE)
        if chief:
            with files.atomic_output(model_path) as tmp:
                model.save(tmp)
        guidance_scale = resolved["guidance_scale"] if model.num_classes else 1.0
        log(f"Sampling {resolved['num_samples']} images ({resolved['sampler'].upper()}, {resolved['sample_steps']} "
            f"steps, guidance {guidance_scale:g})")
        labels, columns = grid_layout(resolved["num_samples"], model.num_classes)
        samples = model.generate(resolved["num_samples"], sampler=resolved["sampler"],
                                 num_steps=resolved["sample_steps"], guidance_scale=guidance_scale,
                                 seed=resolved["seed"], labels=labels, jit_compile=resolved["jit_compile"],
                                 on_non_finite="warn")  # model.keras is written: a diverged run says so, ends
        if chief:
            images.save_grid(samples, os.path.join(out, SAMPLES_FILE), columns=columns)
            images.save_grid(images.enlarge(samples), os.path.join(out, SAMPLES_LARGE_FILE), columns=columns,
                             padding=4)

        last = {k: (v[-1] if v else None) for k, v in history.items()}
        steps_now = callbacks.optimizer_step(model)
        summary = dict(
            preset=preset.name, dataset=resolved["dataset"], steps=steps_now, steps_this_run=steps_now - done,
            resumed_from_step=done, batch_size=resolved["batch_size"], learning_rate=resolved["learning_rate"],
            num_timesteps=resolved["num_timesteps"], seed=resolved["seed"],
            data_seed=resolved["seed"], strategy=distribute.describe(strategy), chief=chief,
            mixed_precision=resolved["mixed_precision"],
            wall_time_seconds=round(time.time() - begin, 3), train_time_seconds=round(fit_seconds, 3),
            final_loss=_float_or_none(last.get("loss")), final_mse=_float_or_none(last.get("mse")),
            final_vb=_float_or_none(last.get("vb")),
            image_size=model.image_shape[0], channels=model.image_shape[-1], num_classes=model.num_classes,
            class_names=list(dataset.class_names) if model.num_classes and dataset.class_names else None,
            samples=dict(file=SAMPLES_FILE, enlarged=SAMPLES_LARGE_FILE, num_images=resolved["num_samples"],
                         columns=columns, sampler=resolved["sampler"], steps=resolved["sample_steps"],
                         seed=resolved["seed"], guidance_scale=guidance_scale,
                         labels=None if labels is None else labels.tolist()),
        )
        if chief:
            write_json(os.path.join(out, SUMMARY_FILE), summary)
        return summary
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

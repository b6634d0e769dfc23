"""The `tfdiffusion` command: train, sample and evaluate diffusion models from the shell."""

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import secrets
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfdiffusion import __version__
from tfdiffusion import data
from tfdiffusion import images
from tfdiffusion import presets
from tfdiffusion import samplers
from tfdiffusion.model import DiffusionModel

__all__ = ["CLIError", "build_parser", "main"]

PROG = "tfdiffusion"
MAX_STEPS_PER_EPOCH = 500
DEFAULT_NUM_SAMPLES = 64
DEFAULT_SAMPLE_STEPS = 50

# Files of a training run, relative to --output-dir.
MODEL_FILE = "model.keras"
SAMPLES_FILE = "samples.png"
SUMMARY_FILE = "train_summary.json"
CHECKPOINT_FILE = os.path.join("checkpoints", "ckpt.keras")
RUN_FILE = os.path.join("checkpoints", "run.json")
LOG_DIR = "logs"

# `train` settings that come from the preset unless given, and that
# `--resume` takes from the interrupted run's checkpoints/run.json.
_RUN_SETTINGS = ("preset", "dataset", "data_dir", "image_size", "batch_size", "learning_rate",
                 "num_timesteps", "steps", "seed", "sampler", "sample_steps", "num_samples", "guidance_scale")


class CLIError(Exception):
    """A problem the user can fix (flag, path, data set): one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors become `CLIError`s (one line, no usage dump)."""

    def error(self, message):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------- arguments
def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer. Received: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}. Received: {text}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


_positive_int = _int_at_least(1)


def _float_in(minimum, strict):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number. Received: {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if strict else '>='} {minimum}. Received: {text}")
        return value
    parse.__name__ = "number"
    return parse


def _label_list(text):
    try:
        labels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2. Received: {text!r}") from None
    return labels


def _preset_defaults(field, fmt="{}"):
    """A preset field's values for help texts, e.g. "shapes, shapes-hybrid: 16; mnist-small: 28"."""
    names_by_value = {}
    for name, preset in presets.PRESETS.items():
        names_by_value.setdefault(fmt.format(getattr(preset, field)), []).append(name)
    if len(names_by_value) == 1:
        return f"{next(iter(names_by_value))} in every preset"
    return "; ".join(f"{', '.join(names)}: {value}" for value, names in names_by_value.items())


def _add_jit_flag(parser, default_text):
    parser.add_argument(
        "--jit-compile", action=argparse.BooleanOptionalAction, default=None,
        help=f"compile with XLA, or not (default: {default_text})")


def _add_data_dir(parser):
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help="where TFDS data sets live (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")


def build_parser():
    """The `tfdiffusion` argument parser with its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Train, sample and evaluate denoising diffusion models (TensorFlow/Keras).",
        epilog=("examples:\n"
                "  tfdiffusion train --preset shapes --output-dir runs/shapes\n"
                "  tfdiffusion sample --model runs/shapes/model.keras --num-images 64 --output grid.png\n"
                "  tfdiffusion evaluate --model runs/shapes/model.keras --dataset shapes --bpd-steps 100"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dataset_help = ("'shapes' (built in, no download), a TFDS name (e.g. mnist, cifar10) or "
                    "a directory of images (class sub-folders give labels)")

    # ------------------------------------------------------------------ train
    train = commands.add_parser(
        "train", help="train a model from a preset and write model, samples and summary",
        description=(
            "Train a DiffusionModel with model.fit and write, in --output-dir: model.keras "
            "(the trained model, EMA weights and optimizer state), samples.png (a sample "
            "grid; one row per class for a class-conditional model), train_summary.json, "
            "checkpoints/ckpt.keras (the whole model after every epoch, written atomically; "
            "--resume continues from it) and logs/ (TensorBoard). Settings not given come from "
            "the preset (or, with --resume, from the interrupted run)."))
    train.add_argument("--preset", choices=sorted(presets.PRESETS),
                       help="named configuration (default: shapes): " + "; ".join(
                           f"{name}: {p.description.rstrip('.')}" for name, p in presets.PRESETS.items()))
    train.add_argument("--dataset", help=f"{dataset_help} (default: the preset's: "
                       f"{_preset_defaults('dataset')})")
    _add_data_dir(train)
    train.add_argument("--output-dir", required=True, metavar="DIR",
                       help="directory for the run's files; created if missing (required)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int,
                        help=f"training steps (default: the preset's: {_preset_defaults('train_steps')})")
    length.add_argument("--epochs", type=_positive_int,
                        help="passes over the training data, instead of --steps (default: use --steps)")
    train.add_argument("--batch-size", type=_positive_int,
                       help=f"images per step (default: the preset's: {_preset_defaults('batch_size')})")
    train.add_argument("--image-size", type=_positive_int,
                       help=f"training resolution in pixels (default: the preset's: "
                       f"{_preset_defaults('image_size')})")
    train.add_argument("--learning-rate", type=_float_in(0.0, strict=True),
                       help=f"peak AdamW learning rate (default: the preset's: "
                       f"{_preset_defaults('learning_rate', '{:g}')})")
    train.add_argument("--num-timesteps", type=_int_at_least(2), metavar="T",
                       help=f"diffusion steps T (default: the preset's: {_preset_defaults('num_timesteps')})")
    train.add_argument("--seed", type=int,
                       help="seed of weight initialization, data order and sample noise (default: 0)")
    train.add_argument("--sampler", choices=samplers.SAMPLERS,
                       help=f"sampler of samples.png: ddim or ddpm (ancestral, respaced to "
                       f"--sample-steps) (default: the preset's: {_preset_defaults('sampler')})")
    train.add_argument("--sample-steps", type=_positive_int,
                       help=f"sampling steps for samples.png, at most T (default: the preset's: "
                       f"{_preset_defaults('sample_steps')}, capped at T)")
    train.add_argument("--num-samples", type=_positive_int,
                       help=f"images in samples.png (default: {DEFAULT_NUM_SAMPLES})")
    train.add_argument("--guidance-scale", type=float, metavar="W",
                       help="classifier-free guidance for samples.png of a conditional model "
                       f"(default: the preset's: {_preset_defaults('guidance_scale', '{:g}')})")
    _add_jit_flag(train, "yes: training and samples compile with XLA")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from checkpoints/ckpt.keras (weights, "
                       "EMA, optimizer state and step) up to --steps in total; unspecified "
                       "settings come from that run (default: start a new run, which refuses a "
                       "directory that already holds one)")
    train.set_defaults(handler=_train)

    # ----------------------------------------------------------------- sample
    sample = commands.add_parser(
        "sample", help="generate images with a trained model",
        description=(
            "Generate images with a model written by `tfdiffusion train` (its EMA weights) and "
            "write a PNG grid and/or an .npz file (\"images\": uint8 [N, H, W, C]; \"labels\": "
            "int32 [N] for a class-conditional model), each atomically. Without --output and "
            "--npz, writes samples.png. Each batch's noise is drawn from --seed and the batch's "
            "offset, so the same flags give the same images."))
    sample.add_argument("--model", required=True, metavar="PATH",
                        help="a .keras model file (or a training --output-dir holding model.keras) (required)")
    sample.add_argument("--num-images", type=_positive_int,
                        help="number of images (default: the number of --labels, else 16)")
    sample.add_argument("--sampler", choices=samplers.SAMPLERS, default="ddim",
                        help="ddim (deterministic with --eta 0) or ddpm (ancestral) (default: ddim)")
    sample.add_argument("--steps", type=_positive_int,
                        help=f"sampling steps in [1, T], evenly spaced (default: ddim {DEFAULT_SAMPLE_STEPS} "
                        "capped at T; ddpm T)")
    sample.add_argument("--eta", type=_float_in(0.0, strict=False),
                        help="DDIM noise scale; 0 is deterministic, 1 DDPM-like (default: 0; ddim only)")
    sample.add_argument("--seed", type=int,
                        help="random seed; the same seed gives the same images (default: a random "
                        "seed, printed)")
    labels = sample.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=_label_list, metavar="L1,L2,...",
                        help="class of each image, repeated to --num-images (default: for a "
                        "class-conditional model, one grid row per class)")
    labels.add_argument("--label", type=int, metavar="L",
                        help="one class for every image (default: see --labels)")
    sample.add_argument("--guidance-scale", type=float, default=1.0, metavar="W",
                        help="classifier-free guidance scale; 1 is none (default: 1.0)")
    sample.add_argument("--output", metavar="PNG",
                        help="write a grid PNG here (default: samples.png unless --npz is given)")
    sample.add_argument("--npz", metavar="FILE",
                        help="write the images (and labels) to this .npz file (default: none)")
    sample.add_argument("--batch-size", type=_positive_int,
                        help="images per network batch (default: all at once)")
    _add_jit_flag(sample, "yes")
    sample.set_defaults(handler=_sample)

    # --------------------------------------------------------------- evaluate
    evaluate = commands.add_parser(
        "evaluate", help="report bits/dim and losses of a trained model on held-out data",
        description=(
            "Evaluate a model written by `tfdiffusion train` (its EMA weights) with "
            "model.evaluate on a held-out split and print JSON: bpd (the variational bound in "
            "bits per dimension) when --metric bpd, the training loss, mse and vb, the number "
            "of images, and which bound estimate was used. Images are resized to the model's "
            "resolution; their channel count (and classes, for a class-conditional model) must "
            "match the model's. The progress bar goes to stderr, the JSON to stdout."))
    evaluate.add_argument("--model", required=True, metavar="PATH",
                          help="a .keras model file (or a training --output-dir holding model.keras) (required)")
    evaluate.add_argument("--dataset", required=True, help=f"{dataset_help} (required)")
    _add_data_dir(evaluate)
    evaluate.add_argument("--split", help="held-out split: shapes 'test' or 'train', a TFDS split "
                          "such as test or train[:10%%]; not for an image folder (default: test)")
    evaluate.add_argument("--metric", choices=("bpd", "loss"), default="bpd",
                          help="bpd: the bound in bits/dim plus the losses; loss: the losses only, "
                          "one network call per image (default: bpd)")
    evaluate.add_argument("--bpd-steps", type=_int_at_least(2), metavar="K",
                          help="bound terms per image: K >= T is the full T-step bound, K < T a "
                          "stratified K-step estimate (K network calls per image) (default: T)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=64,
                          help="images per batch (default: 64)")
    evaluate.add_argument("--num-batches", type=_positive_int,
                          help="evaluate only the first N batches (default: the whole split)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of the evaluation noise and timesteps (default: 0)")
    _add_jit_flag(evaluate, "Keras' 'auto': XLA except on CPU-only machines")
    evaluate.set_defaults(handler=_evaluate)
    return parser


# ---------------------------------------------------------------- helpers
def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _prepare_output_dir(path):
    """Creates `path` if needed and checks a file can be written in it.

    Returns:
        True when this call created the directory.
    """
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CLIError(f"cannot write to --output-dir {path!r}: "
                       f"{error.strerror or _one_line(error)}") from None
    return created


def _check_output_file(path, flag):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path!r} is a directory; give a file name")
    if not os.path.isdir(directory):
        raise CLIError(f"cannot write {flag} {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise CLIError(f"cannot write {flag} {path!r}: directory {directory!r} is not writable")


def _load_data(name, split, image_size, batch_size, *, training, channels=3, with_labels=None,
               data_dir=None, seed=0):
    """Loads --dataset: the built-in shapes, an image folder, or a TFDS data set.

    Args:
        training: shuffle, flip and drop a last partial batch (train), or
            keep the data in order and every image (evaluate).
        channels: channels of an image folder (TFDS and shapes have their own).
        with_labels: None to yield labels when the data has them; False not to.

    Returns:
        An `ImageDataset`.
    """
    options = dict(shuffle=training, seed=seed, drop_remainder=training)
    try:
        if name == "shapes":
            return data.load_shapes(split or "train", image_size, batch_size,
                                    with_labels=with_labels is not False, **options)
        if os.path.exists(name):
            if split is not None:
                raise CLIError(f"--split applies to shapes and TFDS, not to the image folder {name!r}")
            return data.load_image_folder(name, image_size, batch_size, channels=channels,
                                          random_flip=training, with_labels=with_labels, **options)
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise CLIError(f"--dataset {name!r}: {_one_line(error)}") from None
    try:
        return data.load_tfds(name, split or "train", image_size, batch_size, data_dir=data_dir,
                              random_flip=training, with_labels=with_labels, **options)
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise CLIError(f"--dataset {name!r} is not 'shapes' or an existing directory, and as a "
                       f"TFDS name: {_one_line(error)}") from None


def _load_model(path, compile=False, flag="--model"):
    """Loads a `DiffusionModel` from a .keras file (or a run directory holding model.keras).

    Args:
        path: the file or directory.
        compile: also restore the optimizer and its state (to train on).
        flag: how error messages name the file.
    """
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_FILE)):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise CLIError(f"{flag} {path!r}: no such file; expected a .keras file written by "
                       f"`tfdiffusion train` (e.g. OUTPUT_DIR/{MODEL_FILE})")
    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # Any failure here is a file that is not a loadable model.
        raise CLIError(f"{flag} {path!r} could not be loaded as a Keras model: "
                       f"{type(error).__name__}: {_one_line(error)}") from None
    if not isinstance(model, DiffusionModel):
        raise CLIError(f"{flag} {path!r} holds a {type(model).__name__}, not a tfdiffusion "
                       "DiffusionModel")
    return model


def _grid_layout(num_images, num_classes):
    """Default labels and grid columns: one row per class for a conditional model.

    Returns:
        `(labels, columns)`: labels int32 `[num_images]` (None if
        unconditional), `columns` images per grid row.
    """
    if num_classes is None:
        return None, math.ceil(math.sqrt(num_images))
    columns = max(1, math.ceil(num_images / num_classes))
    return (np.arange(num_images) // columns % num_classes).astype(np.int32), columns


def _generate(model, num_images, *, labels=None, **kwargs):
    """`model.generate` with a progress line per batch; bad arguments become `CLIError`s."""
    begin = time.time()

    def progress(done, total):
        print(f"sampled {done}/{total} images ({time.time() - begin:.1f}s)", flush=True)

    try:
        return model.generate(num_images, labels=labels, progress=progress, **kwargs)
    except ValueError as error:
        raise CLIError(f"cannot sample: {_one_line(error)}") from None


def _write_json(path, payload):
    with images.atomic_output(path) as tmp:
        with open(tmp, "w") as file:
            json.dump(payload, file, indent=2)
            file.write("\n")


def _float_or_none(value):
    return None if value is None else float(value)


class _AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights, EMA, optimizer state) to one .keras file after each epoch.

    Unlike `keras.callbacks.ModelCheckpoint`, which writes in place, the file
    is written beside the target and renamed over it, so an interruption
    never leaves a truncated checkpoint behind.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        with images.atomic_output(self.path) as tmp:
            self.model.save(tmp)


class _StopAtStep(keras.callbacks.Callback):
    """Stops `fit` once the optimizer has taken `total_steps` steps."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) >= self.total_steps:
            self.model.stop_training = True


def _tensorboard_callbacks(log_dir):
    """`[keras.callbacks.TensorBoard(log_dir)]`, or `[]` with a note when TensorBoard is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        print("TensorBoard is not installed (pip install tensorboard): no logs are written to "
              f"{log_dir}", file=sys.stderr)
        return []
    return [keras.callbacks.TensorBoard(log_dir)]


# ------------------------------------------------------------------ train
def _resolve_train_settings(args, saved):
    """Settings of a run: flags given, else the resumed run's, else the preset's."""
    settings = dict(saved)
    settings.update({k: getattr(args, k) for k in _RUN_SETTINGS
                     if getattr(args, k, None) is not None})
    if args.epochs is not None:
        settings.pop("steps", None)
    preset = presets.get_preset(settings.get("preset", "shapes"))
    explicit_sample_steps = "sample_steps" in settings
    defaults = dict(preset=preset.name, dataset=preset.dataset, data_dir=None,
                    image_size=preset.image_size, batch_size=preset.batch_size,
                    learning_rate=preset.learning_rate, num_timesteps=preset.num_timesteps,
                    steps=None if args.epochs else preset.train_steps, seed=0,
                    sampler=preset.sampler, sample_steps=preset.sample_steps, num_samples=DEFAULT_NUM_SAMPLES,
                    guidance_scale=preset.guidance_scale)
    settings = {**defaults, **settings}
    if not explicit_sample_steps:
        settings["sample_steps"] = min(settings["sample_steps"], settings["num_timesteps"])
    elif settings["sample_steps"] > settings["num_timesteps"]:
        raise CLIError(f"--sample-steps must be at most the number of diffusion steps "
                       f"T={settings['num_timesteps']}. Received: {settings['sample_steps']}")
    return preset, settings


def _check_resumed_model(model, image_shape, num_classes, num_timesteps):
    found = dict(image_shape=tuple(model.image_shape), num_classes=model.num_classes,
                 num_timesteps=model.diffusion.num_timesteps)
    wanted = dict(image_shape=tuple(image_shape), num_classes=num_classes,
                  num_timesteps=num_timesteps)
    differ = [f"{k}: checkpoint {found[k]}, flags/data {wanted[k]}" for k in found if found[k] != wanted[k]]
    if differ:
        raise CLIError("cannot --resume: the checkpoint's model differs from the requested one ("
                       + "; ".join(differ) + ")")
    if model.optimizer is None:
        raise CLIError("cannot --resume: the checkpoint holds no optimizer state")


def _train(args):
    begin = time.time()
    out = args.output_dir
    checkpoint, run_file = os.path.join(out, CHECKPOINT_FILE), os.path.join(out, RUN_FILE)
    if args.resume and not os.path.isfile(checkpoint):
        raise CLIError(f"cannot --resume: {checkpoint!r} does not exist")
    if not args.resume and any(os.path.exists(os.path.join(out, f)) for f in (CHECKPOINT_FILE, MODEL_FILE)):
        raise CLIError(f"--output-dir {out!r} already holds a training run; pass --resume to "
                       "continue it, or choose another directory")
    saved = {}
    if args.resume and os.path.isfile(run_file):
        with open(run_file) as file:
            saved = json.load(file)
    preset, settings = _resolve_train_settings(args, saved)
    created = _prepare_output_dir(out)
    try:
        model, dataset, settings = _build_training(args, preset, settings, checkpoint)
    except BaseException:
        if created:  # Leave nothing behind when failing before training.
            with contextlib.suppress(OSError):
                os.rmdir(out)
        raise
    steps_per_epoch = settings["steps_per_epoch"]
    os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
    _write_json(run_file, settings)

    total = settings["steps"]
    done = int(model.optimizer.iterations)
    shape = "x".join(map(str, model.image_shape))
    classes = f"{dataset.num_classes} classes" if model.num_classes else "unconditional"
    print(f"Training preset {preset.name!r} on {settings['dataset']} ({shape}, {classes}): "
          f"steps {done} -> {total}, batch {settings['batch_size']}, "
          f"lr {settings['learning_rate']:g}, T={settings['num_timesteps']}; writing to {out}", flush=True)
    history, fit_seconds = {}, 0.0
    if done < total:
        fit_begin = time.time()
        try:
            history = model.fit(
                dataset.dataset.repeat(), steps_per_epoch=steps_per_epoch,
                epochs=math.ceil(total / steps_per_epoch), initial_epoch=done // steps_per_epoch,
                shuffle=False, verbose=1 if sys.stdout.isatty() else 2,
                callbacks=[_StopAtStep(total), _AtomicCheckpoint(checkpoint)]
                + _tensorboard_callbacks(os.path.join(out, LOG_DIR))).history
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; continue with `{PROG} train --output-dir {out} --resume`",
                  file=sys.stderr)
            return 130
        fit_seconds = time.time() - fit_begin
    else:
        print(f"The checkpoint has already been trained {done} steps (>= {total}); not training.")

    model_path = os.path.join(out, MODEL_FILE)
    with images.atomic_output(model_path) as tmp:
        model.save(tmp)
    guidance_scale = settings["guidance_scale"] if model.num_classes else 1.0
    print(f"Sampling {settings['num_samples']} images ({settings['sampler'].upper()}, "
          f"{settings['sample_steps']} steps, "
          f"guidance {guidance_scale:g})", flush=True)
    labels, columns = _grid_layout(settings["num_samples"], model.num_classes)
    samples = _generate(model, settings["num_samples"], sampler=settings["sampler"],
                        num_steps=settings["sample_steps"], guidance_scale=guidance_scale,
                        seed=settings["seed"], labels=labels, jit_compile=args.jit_compile)
    samples_path = os.path.join(out, SAMPLES_FILE)
    images.save_grid(samples, samples_path, nrow=columns)

    last = {k: (v[-1] if v else None) for k, v in history.items()}
    summary = dict(
        preset=preset.name, dataset=settings["dataset"], steps=int(model.optimizer.iterations),
        steps_this_run=int(model.optimizer.iterations) - done, resumed_from_step=done,
        batch_size=settings["batch_size"], learning_rate=settings["learning_rate"],
        num_timesteps=settings["num_timesteps"], seed=settings["seed"],
        wall_time_seconds=round(time.time() - begin, 3), train_time_seconds=round(fit_seconds, 3),
        final_loss=_float_or_none(last.get("loss")), final_mse=_float_or_none(last.get("mse")),
        final_vb=_float_or_none(last.get("vb")),
        image_size=model.image_shape[0], channels=model.image_shape[-1],
        num_classes=model.num_classes,
        class_names=list(dataset.class_names) if model.num_classes and dataset.class_names else None,
        samples=dict(file=SAMPLES_FILE, num_images=settings["num_samples"], columns=columns,
                     sampler=settings["sampler"], steps=settings["sample_steps"], seed=settings["seed"],
                     guidance_scale=guidance_scale,
                     labels=None if labels is None else labels.tolist()),
    )
    summary_path = os.path.join(out, SUMMARY_FILE)
    _write_json(summary_path, summary)
    log_dir = os.path.join(out, LOG_DIR)
    print(f"Wrote\n  model:      {model_path}\n  samples:    {samples_path}\n"
          f"  summary:    {summary_path}\n  checkpoint: {checkpoint}"
          + (f"\n  TensorBoard logs: {log_dir}  (tensorboard --logdir {log_dir})"
             if os.path.isdir(log_dir) else ""))
    return 0


def _build_training(args, preset, settings, checkpoint):
    """Loads the data and builds (or, with --resume, loads) the compiled model.

    Returns:
        `(model, image_dataset, settings)`; settings completed with the total
        `steps` and the `steps_per_epoch` of `fit`.
    """
    keras.utils.set_random_seed(settings["seed"])
    dataset = _load_data(
        settings["dataset"], None, settings["image_size"], settings["batch_size"], training=True,
        channels=preset.channels, with_labels=None if preset.conditional else False,
        data_dir=settings["data_dir"], seed=settings["seed"])
    if args.epochs is not None:
        if not dataset.num_examples:
            raise CLIError(f"--epochs needs the size of --dataset {settings['dataset']!r}, which is "
                           "unknown; give --steps instead")
        data_epoch = dataset.num_examples // settings["batch_size"]
        settings["steps"] = args.epochs * data_epoch
    # One Keras epoch (a progress line, a checkpoint): a pass over the data
    # with --epochs, else at most MAX_STEPS_PER_EPOCH steps. A resumed run
    # keeps its epochs so that epoch numbers (and TensorBoard's) continue.
    steps_per_epoch = settings.get("steps_per_epoch")
    if not steps_per_epoch:
        total = settings["steps"]
        steps_per_epoch = data_epoch if args.epochs is not None else \
            math.ceil(total / math.ceil(total / MAX_STEPS_PER_EPOCH))
    num_classes = dataset.num_classes if preset.conditional else None
    image_shape = (dataset.image_size, dataset.image_size, dataset.channels)
    if args.resume:
        model = _load_model(checkpoint, compile=True, flag="checkpoint")
        _check_resumed_model(model, image_shape, num_classes, settings["num_timesteps"])
        if args.jit_compile is not None:
            model.jit_compile = args.jit_compile
    else:
        # train_steps: where a decaying learning-rate schedule reaches 0.
        preset = dataclasses.replace(preset, learning_rate=settings["learning_rate"],
                                     num_timesteps=settings["num_timesteps"],
                                     train_steps=settings["steps"])
        try:
            model = presets.build_model(preset, num_classes=num_classes, image_size=image_shape[0],
                                        channels=image_shape[-1], seed=settings["seed"])
        except ValueError as error:
            raise CLIError(f"cannot build the {preset.name!r} model: {_one_line(error)}") from None
        # XLA trains 2-3x faster than plain graphs on CPU (benchmarks/README.md);
        # Keras' "auto" would switch it off on CPU-only machines.
        model.compile(optimizer=presets.make_optimizer(preset),
                      jit_compile=True if args.jit_compile is None else args.jit_compile)
    return model, dataset, dict(settings, steps_per_epoch=int(steps_per_epoch))


# ----------------------------------------------------------------- sample
def _sample(args):
    png, npz = args.output, args.npz
    if png is None and npz is None:
        png = "samples.png"
    for path, flag in ((png, "--output"), (npz, "--npz")):
        if path is not None:
            _check_output_file(path, flag)
    model = _load_model(args.model)
    T = model.diffusion.num_timesteps
    if args.eta is not None and args.sampler != "ddim":
        raise CLIError(f"--eta applies to --sampler ddim only. Received: --sampler {args.sampler}")
    steps = args.steps or (min(DEFAULT_SAMPLE_STEPS, T) if args.sampler == "ddim" else T)
    if steps > T:
        raise CLIError(f"--steps must be between 1 and the model's T={T}. Received: {steps}")
    if args.labels is not None:
        num_images = args.num_images or len(args.labels)
        if len(args.labels) > num_images:
            raise CLIError(f"--labels gives {len(args.labels)} labels for --num-images {num_images}")
        labels, columns = np.resize(np.asarray(args.labels, np.int32), num_images), None
    else:
        num_images = args.num_images or 16
        if args.label is not None:
            labels, columns = np.full([num_images], args.label, np.int32), None
        else:
            labels, columns = _grid_layout(num_images, model.num_classes)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"Sampling {num_images} images ({args.sampler}, {steps} steps, seed {seed})", flush=True)
    generated = _generate(model, num_images, sampler=args.sampler, num_steps=steps, seed=seed,
                          labels=labels, guidance_scale=args.guidance_scale, eta=args.eta or 0.0,
                          batch_size=args.batch_size, jit_compile=args.jit_compile)
    if png is not None:
        images.save_grid(generated, png, nrow=columns)
        print(f"Wrote {png}")
    if npz is not None:
        images.save_npz(npz, generated, labels if model.num_classes else None)
        print(f"Wrote {npz}")
    return 0


# --------------------------------------------------------------- evaluate
def _evaluate(args):
    model = _load_model(args.model)
    T = model.diffusion.num_timesteps
    height, _, channels = model.image_shape
    if args.bpd_steps is not None and args.metric != "bpd":
        raise CLIError("--bpd-steps applies to --metric bpd only")
    bpd_steps = min(args.bpd_steps or T, T) if args.metric == "bpd" else 0
    model.set_bpd_evaluation(bpd_steps)
    model.set_evaluation_seed(args.seed)
    model.compile(optimizer=None, jit_compile="auto" if args.jit_compile is None else args.jit_compile)

    dataset = _load_data(args.dataset, args.split, height, args.batch_size, training=False,
                         channels=channels, with_labels=None if model.num_classes else False,
                         data_dir=args.data_dir, seed=args.seed)
    if dataset.channels != channels:
        raise CLIError(f"--dataset {args.dataset!r} has {dataset.channels}-channel images but the "
                       f"model expects {channels} channels ({'x'.join(map(str, model.image_shape))})")
    if model.num_classes is not None and dataset.num_classes != model.num_classes:
        found = "no labels" if dataset.num_classes is None else f"{dataset.num_classes} classes"
        raise CLIError(f"the model is class-conditional with {model.num_classes} classes but "
                       f"--dataset {args.dataset!r} has {found}")
    num_images = dataset.num_examples
    if num_images is None:
        num_images = int(dataset.dataset.reduce(0, lambda n, batch: n + tf.shape(
            batch[0] if isinstance(batch, tuple) else batch)[0]))
    num_batches = math.ceil(num_images / args.batch_size)
    if args.num_batches is not None and args.num_batches < num_batches:
        num_batches = args.num_batches
        num_images = num_batches * args.batch_size
    print(f"Evaluating {num_images} images of {args.dataset} ({args.metric}"
          + (f", {bpd_steps} of T={T} bound terms" if bpd_steps else "") + ")",
          file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # Keep stdout for the JSON.
        results = model.evaluate(dataset.dataset, steps=num_batches, return_dict=True,
                                 verbose=1 if sys.stderr.isatty() else 2)
    report = dict(model=args.model, dataset=args.dataset,
                  split=None if os.path.exists(args.dataset) else (args.split or "test"),
                  num_images=num_images, metric=args.metric)
    if bpd_steps:
        report.update(bpd=float(results["bpd"]), bpd_steps=bpd_steps, num_timesteps=T,
                      bpd_estimate=("full T-step bound" if bpd_steps >= T
                                    else f"stratified {bpd_steps}-step estimate"))
    report.update(loss=float(results["loss"]), mse=float(results["mse"]), vb=float(results["vb"]),
                  seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


# ------------------------------------------------------------------- main
def main(argv=None):
    """Runs the `tfdiffusion` command.

    Args:
        argv: the arguments after the program name; None for `sys.argv[1:]`.

    Returns:
        The exit code: 0 on success, 2 for a usage error (reported on stderr
        as one `tfdiffusion: error: ...` line), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except CLIError as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

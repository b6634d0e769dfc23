"""The `tfdiffusion` subcommands: thin handlers over `training`, `loading`, `data` and `DiffusionModel.generate`."""

import contextlib
import json
import math
import os
import secrets
import sys
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from tfdiffusion import data
from tfdiffusion import features
from tfdiffusion import images
from tfdiffusion import metrics
from tfdiffusion import paths
from tfdiffusion import samplers
from tfdiffusion import sampling
from tfdiffusion import training
from tfdiffusion.convert import convert_diffusers
from tfdiffusion.export import export_saved_model
from tfdiffusion.cli.parser import DEFAULT_EVALUATE_IMAGES
from tfdiffusion.cli.parser import DEFAULT_SAMPLE_BATCH
from tfdiffusion.cli.parser import DEFAULT_SAMPLE_STEPS
from tfdiffusion.cli.parser import GRID_EXTENSIONS
from tfdiffusion.cli.parser import MAX_NETWORK_EVALUATIONS
from tfdiffusion.cli.parser import CLIError
from tfdiffusion.export import resolve_version_dir
from tfdiffusion.loading import load_model
from tfdiffusion.loading import resolve_model_path
from tfdiffusion.served_model import is_saved_model
from tfdiffusion.served_model import load_generator

__all__ = ["check_output_apart", "convert", "evaluate", "export", "sample", "train"]


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _is_earlier_output(path, kind):
    """Whether an existing file is what `sample` writes: an image grid, or an .npz of images."""
    try:
        if kind == "grid":
            with Image.open(path) as image:
                return image.format in ("PNG", "JPEG")
        with np.load(path, allow_pickle=False) as saved:
            return set(saved.files) <= {"images", "labels"} and "images" in saved.files
    except Exception:  # Anything unreadable as that kind is not an earlier output.
        return False


def _read_paths(args):
    """What the command reads, as `(argument name, paths)`: --model's file (a run folder's model.keras)
    or SavedModel version folder, and an image-folder --dataset with the folders its links lead to.
    A --model that cannot be found is left to the loader's message."""
    found = []
    model = getattr(args, "model", None)
    if model is not None:
        try:
            found.append(("model", [resolve_version_dir(model) if is_saved_model(model)
                                    else resolve_model_path(model)]))
        except (ValueError, OSError):
            pass
    dataset = getattr(args, "dataset", None)
    if dataset is not None and data.dataset_kind(dataset) == "folder":
        found.append(("dataset", [dataset, *paths.reachable_folders(dataset)]))
    return found


def check_output_apart(output, name, args):
    """Refuses an output (a file or a folder) that is, or lies inside, something the command reads
    (`_read_paths`), under any spelling; `name` is its argument, e.g. "output" for --output."""
    for input_name, inputs in _read_paths(args):
        try:
            paths.check_not_inside(output, name, inputs, input_name,
                                   "an output must never be written over or into what the command reads")
        except ValueError as error:
            raise CLIError(_one_line(error)) from None


def _check_writable(path, name):
    try:
        paths.check_writable(path, name)
    except ValueError as error:
        raise CLIError(_one_line(error)) from None


def _check_output_file(path, flag, kind, overwrite, extensions):
    """Refuses an output path before any work: wrong extension, a directory, a missing folder or one
    that takes no new file, or an existing file (replaced only with --overwrite, and only if it is
    an earlier output of the same kind)."""
    if not path.lower().endswith(extensions):
        raise CLIError(f"{flag} {path!r} must end in {' or '.join(extensions)}")
    directory = paths.real_path(os.path.dirname(path) or ".")
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path!r} is a directory; give a file name")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CLIError(f"cannot write {flag} {path!r}: {directory!r} is a file, not a directory")
    if not os.path.isdir(directory):
        raise CLIError(f"cannot write {flag} {path!r}: directory {directory!r} does not exist")
    _check_writable(path, flag.lstrip("-"))
    if os.path.lexists(path):
        if not _is_earlier_output(path, kind):
            what = "an image grid" if kind == "grid" else "an .npz of sampled images"
            raise CLIError(f"{flag} {path!r} exists and is not {what}; refusing to replace it")
        if not overwrite:
            raise CLIError(f"{flag} {path!r} exists; pass --overwrite to replace it")


def _load(path, flag="--model"):
    try:
        return load_model(path)
    except (ValueError, OSError) as error:
        raise CLIError(f"{flag} {_one_line(error)}") from None


def _progress_printer(file=None):
    """Prints each finished batch with the time so far and, from the speed so far, the time left."""
    begin = time.time()

    def progress(done, total):
        elapsed = time.time() - begin
        left = f", about {_duration(elapsed / done * (total - done))} left" if 0 < done < total else ""
        print(f"sampled {done}/{total} images ({elapsed:.1f}s{left})", file=file or sys.stdout, flush=True)

    return progress


def _duration(seconds):
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _sampler_options(args, sampler):
    """--eta and --churn as `generate`'s options (refused for samplers without them); --threshold checked."""
    options = {name: value for name, value in (("eta", args.eta), ("churn", args.churn)) if value is not None}
    takes = samplers.get_sampler(sampler).options
    for name in options:
        if name not in takes:
            users = [s for s in samplers.sampler_names() if name in samplers.get_sampler(s).options]
            raise CLIError(f"--{name} applies to --sampler {', '.join(users)} only. Received: --sampler {sampler}")
    if args.threshold is not None and args.threshold > 1:
        raise CLIError(f"--threshold must be a percentile in (0, 1]. Received: {args.threshold}")
    if args.spacing is not None and args.spacing not in samplers.get_sampler(sampler).spacings:
        users = [s for s in samplers.sampler_names() if args.spacing in samplers.get_sampler(s).spacings]
        raise CLIError(f"--spacing {args.spacing} applies to --sampler {', '.join(users)} only. "
                       f"Received: --sampler {sampler}")
    return options


def _check_run_length(args, num_images, sampler, steps, guided):
    """Refuses a sampling run of more than MAX_NETWORK_EVALUATIONS network evaluations (of one image each)
    without --allow-long-run; returns the count, spelled out, for the line that starts the run."""
    per_image = samplers.get_sampler(sampler).network_evaluations(steps) * (2 if guided else 1)
    total = num_images * per_image
    if total > MAX_NETWORK_EVALUATIONS and not args.allow_long_run:
        raise CLIError(f"--num-images {num_images} x {per_image} network evaluations per image ({sampler}, "
                       f"{steps} steps{', x2 for guidance' if guided else ''}) = {total:.3g} evaluations, above "
                       f"the {MAX_NETWORK_EVALUATIONS:.0e} a run may make without --allow-long-run (hours to days "
                       "on a CPU); pass --allow-long-run to start it, or ask for fewer images or steps")
    return f"{num_images} x {per_image} = {total} network evaluations"


def _sampling_steps(args, sampler, T):
    """--steps, or the default (50 capped at T; ddpm T), checked against [min_steps, T]."""
    steps = args.steps or (T if sampler == "ddpm" else min(DEFAULT_SAMPLE_STEPS, T))
    if steps > T:
        raise CLIError(f"--steps must be between 1 and the model's T={T}. Received: {steps}")
    family = samplers.get_sampler(sampler)
    if steps < family.min_steps:
        raise CLIError(f"--steps must be at least {family.min_steps} for --sampler {sampler}: "
                       f"{family.min_steps_reason} Received: {steps}")
    return steps


# ------------------------------------------------------------------ train
_SETTING_FLAGS = ("preset", "dataset", "data_dir", "image_size", "batch_size", "learning_rate", "num_timesteps",
                  "steps", "epochs", "seed", "sampler", "sample_steps", "num_samples", "guidance_scale",
                  "checkpoint_every", "sample_every", "jit_compile", "skip_unreadable", "strategy", "mixed_precision",
                  "gradient_checkpointing")


def train(args):
    settings = training.TrainSettings(**{name: getattr(args, name) for name in _SETTING_FLAGS})
    try:
        summary = training.train(args.output_dir, settings, resume=args.resume,
                                 log=lambda line: print(line, flush=True),
                                 verbose=1 if sys.stdout.isatty() else 2)
    except KeyboardInterrupt:
        print(f"tfdiffusion: interrupted; continue with `tfdiffusion train --output-dir {args.output_dir} "
              "--resume`", file=sys.stderr)
        return 130
    out = args.output_dir
    if not summary["chief"]:
        print("Done (the chief wrote the run's files)")
        return 0
    log_dir = os.path.join(out, training.LOG_DIR)
    print(f"Wrote\n  model:      {os.path.join(out, training.MODEL_FILE)}\n"
          f"  samples:    {os.path.join(out, training.SAMPLES_FILE)} "
          f"(enlarged: {os.path.join(out, training.SAMPLES_LARGE_FILE)})\n"
          f"  summary:    {os.path.join(out, training.SUMMARY_FILE)}\n"
          f"  checkpoint: {os.path.join(out, training.CHECKPOINT_FILE)}"
          + (f"\n  TensorBoard logs: {log_dir}  (tensorboard --logdir {log_dir})" if os.path.isdir(log_dir) else ""))
    return 0


# ----------------------------------------------------------------- sample
def _fitting_batch(model, num_images, guidance_scale):
    """The largest batch up to DEFAULT_SAMPLE_BATCH (and num_images) whose sampling fits in memory."""
    batch = min(num_images, DEFAULT_SAMPLE_BATCH, getattr(model, "max_images", DEFAULT_SAMPLE_BATCH))
    guided = model.num_classes is not None and guidance_scale != 1.0
    while batch > 1:
        try:
            sampling.check_sampling_memory(getattr(model, "ema_network", None), model.image_shape, num_images,
                                           batch, guided)
            break
        except ValueError:
            batch //= 2
    return batch


def sample(args):
    png, npz = args.output, args.npz
    if png is None and npz is None:
        png = "samples.png"
    if png is not None:
        _check_output_file(png, "--output", "grid", args.overwrite, GRID_EXTENSIONS)
    if npz is not None:
        _check_output_file(npz, "--npz", "npz", args.overwrite, (".npz",))
    if png is not None and npz is not None and paths.real_path(png) == paths.real_path(npz):
        raise CLIError(f"--output and --npz name the same file {png!r}")
    for output, name in ((png, "output"), (npz, "npz")):
        if output is not None:
            check_output_apart(output, name, args)
    options = _sampler_options(args, args.sampler)
    try:  # a .keras file, a run folder or an exported SavedModel; says which
        model = load_generator(args.model, log=lambda line: print(line, flush=True), trust_graph=args.trust_model)
    except (ValueError, OSError) as error:
        raise CLIError(f"--model {_one_line(error)}") from None
    T = model.num_timesteps if hasattr(model, "num_timesteps") else model.diffusion.num_timesteps
    steps = _sampling_steps(args, args.sampler, T)
    num_images = args.num_images or (len(args.labels) if args.labels is not None else 16)
    try:  # the result alone must fit, before labels and layout are made for it
        sampling.check_sampling_memory(getattr(model, "ema_network", None), model.image_shape, num_images, 1,
                                       guided=False)
    except ValueError as error:
        raise CLIError(f"cannot sample: {_one_line(error)}") from None
    if args.labels is not None:
        if len(args.labels) > num_images:
            raise CLIError(f"--labels gives {len(args.labels)} labels for --num-images {num_images}")
        labels, columns = np.resize(np.asarray(args.labels, np.int32), num_images), None
    else:
        if args.label is not None:
            labels, columns = np.full([num_images], args.label, np.int32), None
        else:
            labels, columns = training.grid_layout(num_images, model.num_classes)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    guided = model.num_classes is not None and args.guidance_scale != 1.0
    evaluations = _check_run_length(args, num_images, args.sampler, steps, guided)
    batch_size = args.batch_size or _fitting_batch(model, num_images, args.guidance_scale)
    print(f"Sampling {num_images} images ({args.sampler}, {steps} steps, seed {seed}): {evaluations}", flush=True)
    try:
        generated = model.generate(num_images, sampler=args.sampler, num_steps=steps, seed=seed, labels=labels,
                                   guidance_scale=args.guidance_scale, options=options, spacing=args.spacing,
                                   threshold=args.threshold, batch_size=batch_size, jit_compile=args.jit_compile,
                                   progress=_progress_printer())
    except (ValueError, TypeError) as error:
        raise CLIError(f"cannot sample: {_one_line(error)}") from None
    if png is not None:
        images.save_grid(generated, png, columns=columns, image_format="JPEG" if png.lower().endswith(
            (".jpg", ".jpeg")) else "PNG")
        print(f"Wrote {png}")
    if npz is not None:
        images.save_npz(npz, generated, labels if model.num_classes else None)
        print(f"Wrote {npz}")
    return 0


# --------------------------------------------------------------- evaluate
_QUALITY_FLAGS = ("num_images", "inception_weights", "kid_subset_size", "sampler", "steps", "spacing", "eta", "churn",
                  "threshold", "guidance_scale")


def _held_out_split(args):
    """--split, by default "test" (load_dataset's own default is "train"), none for an image folder."""
    if args.split is not None:
        return args.split
    return None if os.path.exists(args.dataset) else "test"


def _flag(name):
    return "--" + name.replace("_", "-")


def evaluate(args):
    if args.bpd_steps is not None and args.metric != "bpd":
        raise CLIError("--bpd-steps applies to --metric bpd only")
    if args.metric in ("fid", "kid"):
        return _evaluate_quality(args)
    given = [_flag(name) for name in _QUALITY_FLAGS if getattr(args, name) is not None]
    given += ["--download-inception"] if args.download_inception else []
    given += ["--allow-long-run"] if args.allow_long_run else []
    given += ["--features"] if args.features != "auto" else []
    given += ["--trust-model"] if args.trust_model else []
    if given:
        raise CLIError(f"{given[0]} applies to --metric fid and kid only. Received: --metric {args.metric}")
    model = _load(args.model)
    T = model.diffusion.num_timesteps
    height, _, channels = model.image_shape
    bpd_steps = min(args.bpd_steps or T, T) if args.metric == "bpd" else 0
    model.set_bpd_evaluation(bpd_steps)
    model.set_evaluation_seed(args.seed)
    model.compile(optimizer=None, jit_compile="auto" if args.jit_compile is None else args.jit_compile)
    dataset = _held_out_dataset(args, model, args.batch_size)
    num_images = dataset.num_examples
    if num_images is None:
        num_images = int(dataset.batches.reduce(0, lambda n, batch: n + tf.shape(
            batch[0] if isinstance(batch, tuple) else batch)[0]))
    num_batches = math.ceil(num_images / args.batch_size)
    if args.num_batches is not None and args.num_batches < num_batches:
        num_batches = args.num_batches
        num_images = num_batches * args.batch_size
    print(f"Evaluating {num_images} images of {args.dataset} ({args.metric}"
          + (f", {bpd_steps} of T={T} bound terms" if bpd_steps else "") + ")", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # Keep stdout for the JSON.
        results = model.evaluate(dataset.batches, steps=num_batches, return_dict=True,
                                 verbose=1 if sys.stderr.isatty() else 2)
    report = dict(model=args.model, dataset=args.dataset, split=_held_out_split(args),
                  num_images=num_images, metric=args.metric)
    if bpd_steps:
        report.update(bpd=float(results["bpd"]), bpd_steps=bpd_steps, num_timesteps=T,
                      bpd_estimate=("full T-step bound" if bpd_steps >= T else f"stratified {bpd_steps}-step estimate"))
    report.update(loss=float(results["loss"]), mse=float(results["mse"]), vb=float(results["vb"]), seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


def _feature_extractor(args):
    """The --features extractor (auto: shapes for the shapes data), with a clear error if Inception's weights
    are missing; returns `(name, extractor)`."""
    name = args.features if args.features != "auto" else ("shapes" if args.dataset == "shapes" else "inception")
    if name != "inception":
        for flag, value in (("--inception-weights", args.inception_weights),
                            ("--download-inception", args.download_inception or None)):
            if value is not None:
                raise CLIError(f"{flag} applies to --features inception only. Received: --features {args.features}"
                               + (f" (shapes for --dataset {args.dataset})" if args.features == "auto" else ""))
        return name, features.shapes_features()
    try:
        return name, features.inception_features(args.inception_weights or "imagenet",
                                                 download=args.download_inception)
    except FileNotFoundError:
        if args.inception_weights:
            raise CLIError(f"--inception-weights {args.inception_weights!r} does not exist; expected a local copy "
                           f"of Keras' {features.INCEPTION_WEIGHTS_FILE}") from None
        raise CLIError(f"--features inception needs Keras' InceptionV3 ImageNet weights, which are not at "
                       f"{features.inception_weights_path()}: --download-inception fetches them there (87 MB, "
                       f"once), or --inception-weights FILE names a local copy of {features.INCEPTION_WEIGHTS_FILE}; "
                       "the built-in shapes data works offline with --features shapes") from None
    except OSError as error:
        raise CLIError(f"--download-inception: {_one_line(error)}") from None


def _held_out_dataset(args, model, batch_size):
    """--dataset's held-out split at the model's resolution, checked against the model's channels and classes."""
    height, _, channels = model.image_shape
    try:
        dataset = data.load_dataset(args.dataset, _held_out_split(args), height, batch_size, training=False,
                                    channels=channels, with_labels=None if model.num_classes else False,
                                    data_dir=args.data_dir, seed=args.seed,
                                    skip_unreadable=bool(args.skip_unreadable))
    except (ValueError, TypeError) as error:
        raise CLIError(f"--dataset {_one_line(error)}") from None
    if dataset.channels != channels:
        raise CLIError(f"--dataset {args.dataset!r} has {dataset.channels}-channel images but the model "
                       f"expects {channels} channels ({'x'.join(map(str, model.image_shape))})")
    if model.num_classes is not None and dataset.num_classes != model.num_classes:
        found = "no labels" if dataset.num_classes is None else f"{dataset.num_classes} classes"
        raise CLIError(f"the model is class-conditional with {model.num_classes} classes but "
                       f"--dataset {args.dataset!r} has {found}")
    return dataset


def _real_images(args, model, num_images):
    """The first `num_images` images of the held-out split at the model's resolution, and their labels."""
    height, _, channels = model.image_shape
    dataset = _held_out_dataset(args, model, min(num_images, 256))
    if args.num_images is not None and dataset.num_examples is not None and dataset.num_examples < num_images:
        raise CLIError(f"--num-images {num_images} is more than the {dataset.num_examples} images of "
                       f"--dataset {args.dataset!r}")
    images_seen, labels_seen, count = [], [], 0
    for batch in dataset.batches:
        batch_images, batch_labels = batch if isinstance(batch, tuple) else (batch, None)
        images_seen.append(batch_images.numpy())
        if batch_labels is not None:
            labels_seen.append(batch_labels.numpy())
        count += images_seen[-1].shape[0]
        if count >= num_images:
            break
    real = np.concatenate(images_seen)[:num_images]
    labels = np.concatenate(labels_seen)[:num_images].astype(np.int32) if labels_seen else None
    if args.num_images is not None and len(real) < num_images:
        raise CLIError(f"--num-images {num_images} is more than the {len(real)} images of --dataset {args.dataset!r}")
    return real, labels


def _evaluate_quality(args):
    """`evaluate --metric fid|kid`: generated images against real ones in a feature space, as JSON."""
    if args.num_batches is not None:
        raise CLIError(f"--num-batches applies to --metric bpd and loss; --metric {args.metric} compares "
                       "--num-images images")
    if args.num_images is not None and args.num_images < 2:
        raise CLIError(f"--num-images must be at least 2 for --metric {args.metric} (a covariance, or an unbiased "
                       f"kernel estimate, needs 2 images a side). Received: {args.num_images}")
    if args.kid_subset_size is not None and args.metric != "kid":
        raise CLIError(f"--kid-subset-size applies to --metric kid only. Received: --metric {args.metric}")
    sampler = args.sampler or "ddim"
    options = _sampler_options(args, sampler)
    guidance_scale = 1.0 if args.guidance_scale is None else args.guidance_scale
    feature_name, extractor = _feature_extractor(args)
    try:
        model = load_generator(args.model, log=lambda line: print(line, file=sys.stderr, flush=True),
                               trust_graph=args.trust_model)
    except (ValueError, OSError) as error:
        raise CLIError(f"--model {_one_line(error)}") from None
    T = model.num_timesteps if hasattr(model, "num_timesteps") else model.diffusion.num_timesteps
    steps = _sampling_steps(args, sampler, T)
    if model.num_classes is None and guidance_scale != 1.0:
        raise CLIError(f"--guidance-scale needs a class-conditional model; this one is unconditional. "
                       f"Received: {guidance_scale}")
    real, real_labels = _real_images(args, model, args.num_images or DEFAULT_EVALUATE_IMAGES)
    num_images = len(real)
    if num_images < 2:
        raise CLIError(f"--dataset {args.dataset!r} has {num_images} image(s); --metric {args.metric} needs 2 or more")
    evaluations = _check_run_length(args, num_images, sampler, steps,
                                    model.num_classes is not None and guidance_scale != 1.0)
    labels = real_labels if model.num_classes is not None else None
    print(f"Generating {num_images} images ({sampler}, {steps} steps, seed {args.seed}; {evaluations}) against "
          f"{num_images} real images of {args.dataset}; {feature_name} features", file=sys.stderr, flush=True)
    try:
        generated = model.generate(num_images, sampler=sampler, num_steps=steps, seed=args.seed, labels=labels,
                                   guidance_scale=guidance_scale, options=options or None, spacing=args.spacing,
                                   threshold=args.threshold, batch_size=_fitting_batch(model, num_images,
                                                                                        guidance_scale),
                                   jit_compile=args.jit_compile, progress=_progress_printer(sys.stderr))
    except (ValueError, TypeError) as error:
        raise CLIError(f"cannot sample: {_one_line(error)}") from None
    if args.metric == "fid":
        metric = metrics.FrechetInceptionDistance(extractor)
    else:
        metric = metrics.KernelInceptionDistance(extractor, subset_size=min(args.kid_subset_size or 1000,
                                                                            num_images))
    for start in range(0, num_images, 256):
        metric.update_state(real[start:start + 256], generated[start:start + 256])
    report = dict(model=args.model, dataset=args.dataset, split=_held_out_split(args), metric=args.metric)
    if args.metric == "fid":
        report["fid"] = float(metric.result())
    else:
        kid, kid_std = metric.result_with_std()
        report.update(kid=float(kid), kid_std=float(kid_std), kid_subset_size=metric.subset_size)
    spacing = args.spacing or getattr(model, "spacing", None) or getattr(model, "metadata", {}).get("spacing")
    report.update(num_images=num_images, features=feature_name, feature_dim=metric.feature_dim, sampler=sampler,
                  steps=steps, network_evaluations=samplers.get_sampler(sampler).network_evaluations(steps),
                  spacing=spacing, threshold=args.threshold, options=options, guidance_scale=guidance_scale,
                  seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


# ---------------------------------------------------------------- convert
def convert(args):
    _check_writable(args.output, "output")
    try:
        limit = {} if args.max_parameters is None else {"max_parameters": args.max_parameters}
        model = convert_diffusers(args.from_diffusers, args.output, overwrite=args.overwrite, **limit)
    except (FileNotFoundError, FileExistsError) as error:
        raise CLIError(_one_line(error)) from None
    print(f"Wrote {args.output}: {model.network.count_params() / 1e6:.1f}M parameters, "
          f"T={model.diffusion.num_timesteps}, {model.diffusion.model_mean_type} prediction, "
          f"sampling spacing {model.spacing!r}")
    return 0


# ----------------------------------------------------------------- export
def export(args):
    if args.overwrite:
        for _, model_files in _read_paths(args):
            try:
                paths.check_not_inside(model_files[0], "model", [args.output], "output",
                                       "--overwrite may replace what lies there")
            except ValueError as error:
                raise CLIError(_one_line(error)) from None
    _check_writable(args.output, "output")
    if args.threshold is not None and args.threshold > 1:
        raise CLIError(f"--threshold must be a percentile in (0, 1]. Received: {args.threshold}")
    if args.spacing is not None:
        refusing = [name for name in (args.samplers or samplers.sampler_names())
                    if args.spacing not in samplers.get_sampler(name).spacings]
        if refusing:
            raise CLIError(f"--spacing {args.spacing} does not apply to {', '.join(refusing)}; choose --samplers "
                           "among " + ", ".join(name for name in samplers.sampler_names()
                                                if args.spacing in samplers.get_sampler(name).spacings))
    model = _load(args.model)
    try:
        path = export_saved_model(model, args.output, version=args.version, max_images=args.max_images,
                                  samplers=args.samplers, default_sampler=args.default_sampler,
                                  spacing=args.spacing, threshold=args.threshold,
                                  jit_compile=bool(args.jit_compile), overwrite=args.overwrite)
    except FileExistsError as error:
        raise CLIError(f"--output {_one_line(error)}") from None
    names = ", ".join("generate_" + name for name in (args.samplers or samplers.sampler_names()))
    print(f"Wrote {path}: signatures generate (= serving_default, {args.default_sampler}), {names}, denoise; "
          f"at most {args.max_images} images per request")
    return 0

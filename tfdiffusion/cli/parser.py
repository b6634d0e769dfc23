"""The `tfdiffusion` argument parser: subcommands, flag types, help texts with every default."""

import argparse
import math

from tfdiffusion import __version__
from tfdiffusion import distribute
from tfdiffusion import presets
from tfdiffusion import samplers
from tfdiffusion import training

__all__ = ["CLIError", "PROG", "build_parser"]

PROG = "tfdiffusion"
DEFAULT_SAMPLE_STEPS = 50
DEFAULT_SAMPLE_BATCH = 256
DEFAULT_EVALUATE_IMAGES = 1000
EVALUATE_METRICS = ("bpd", "loss", "fid", "kid")
GRID_EXTENSIONS = (".png", ".jpg", ".jpeg")
# The most network evaluations (of one image each) `sample` and `evaluate --metric fid|kid` start without
# --allow-long-run: 200 steps for 50,000 images; hours for a small model on a CPU, days for a large one
# (benchmarks/README.md: 12 evaluations/s for ddpm-cifar10, 150 for mnist-small on 2 CPU cores).
MAX_NETWORK_EVALUATIONS = 10**7


class CLIError(Exception):
    """A problem the user can fix (flag, path, data set): one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors become `CLIError`s (one line, no usage dump)."""

    def error(self, message):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------- arguments
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
_POWERS = {INT64_MIN: "-2**63", INT64_MAX: "2**63 - 1", INT32_MIN: "-2**31", INT32_MAX: "2**31 - 1",
           training.MAX_SEED: "2**32 - 1"}


def _int_in(minimum, maximum=INT64_MAX, name=None):
    """An integer flag in [minimum, maximum]; by default at most int64's largest value, which every
    count, size and seed must fit (TensorFlow holds them as int64)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer. Received: {text!r}") from None
        if value < minimum or value > maximum:
            bound = (f">= {minimum}" if maximum == INT64_MAX and minimum >= 0 and value < minimum else
                     f"in [{_POWERS.get(minimum, minimum)}, {_POWERS.get(maximum, maximum)}]")
            raise argparse.ArgumentTypeError(f"must be an integer {bound}. Received: {text}")
        return value
    parse.__name__ = name or f"integer >= {minimum}"
    return parse


_positive_int = _int_in(1)
_seed = _int_in(INT64_MIN, INT64_MAX, name="seed")
_train_seed = _int_in(0, training.MAX_SEED, name="seed")  # what `keras.utils.set_random_seed` takes
_label = _int_in(INT32_MIN, INT32_MAX, name="label")


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


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number. Received: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number. Received: {text}")
    return value


_finite_float.__name__ = "number"


def _text(text):
    """A path or a name: any string but the empty one (which a shell gives for an unset variable, and which
    would mean the current directory or the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path or a name. Received: {text!r}")
    return text


_text.__name__ = "path or name"


def _label_list(text):
    try:
        labels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2. Received: {text!r}") from None
    for label in labels:
        if not INT32_MIN <= label <= INT32_MAX:
            raise argparse.ArgumentTypeError(f"labels must be integers in [-2**31, 2**31 - 1] (int32). "
                                             f"Received: {label}")
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
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--compilation-cache", metavar="DIR", type=_text,
        help="keep XLA's compiled programs in DIR, so that a later run of the same configuration "
        "starts without compiling (default: $TFDIFFUSION_CACHE_DIR, else ~/.cache/tfdiffusion/xla)")
    cache.add_argument("--no-compilation-cache", action="store_true",
                       help="compile every run afresh and keep nothing on disk (default: the cache is on)")


def _add_data_dir(parser):
    parser.add_argument(
        "--data-dir", metavar="DIR", type=_text,
        help="where TFDS data sets live (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument(
        "--skip-unreadable", action="store_true", default=None,
        help="leave out unreadable files (empty, truncated, not images) of an image-folder --dataset, "
        "reporting how many (default: refuse the folder, naming them)")


def _add_trust_flag(parser):
    parser.add_argument(
        "--trust-model", action="store_true",
        help="run a SavedModel --model's graph without checking it. By default its ops are checked first "
        "against those tfdiffusion's own exports use, and a graph that reads or writes files, runs Python or "
        "talks to other machines is refused, naming the op; what the allowed ops compute is not checked. A "
        ".keras --model is always loaded with Keras' safe_mode (default: check)")


def _add_sampling_flags(parser, guidance=False):
    """The flags that choose a sampler and its settings (`sample`, `evaluate --metric fid|kid`).

    With `guidance` (evaluate), `--guidance-scale` is added too and every default is None, so that
    a flag given with a metric that does not sample can be refused; the handler fills the defaults.
    """
    parser.add_argument("--sampler", choices=samplers.sampler_names(), default=None if guidance else "ddim",
                        help="ddim (deterministic with --eta 0), ddpm (ancestral), dpmpp_2m, dpmpp_3m, "
                        "dpmpp_2m_sde (DPM-Solver++), euler, heun, euler_ancestral (Karras et al.) "
                        "(default: ddim)")
    parser.add_argument("--steps", type=_positive_int,
                        help=f"sampling steps in [1, T] (default: {DEFAULT_SAMPLE_STEPS} capped at T; ddpm T); "
                        "heun makes 2 network calls per step but the last")
    parser.add_argument("--spacing", choices=samplers.SOLVER_SPACINGS,
                        help="how the steps spread over the T timesteps; karras (Karras et al.'s sigmas) "
                        "for the dpmpp_* and euler/heun samplers only (default: the model's)")
    parser.add_argument("--eta", type=_float_in(0.0, strict=False),
                        help="noise scale of ddim (default 0: deterministic), euler_ancestral and "
                        "dpmpp_2m_sde (default 1); those samplers only")
    parser.add_argument("--churn", type=_float_in(0.0, strict=False),
                        help="Karras et al.'s S_churn for euler and heun (default: 0, deterministic)")
    parser.add_argument("--threshold", type=_float_in(0.0, strict=True), metavar="P",
                        help="dynamic thresholding of each predicted x_0 at percentile P in (0, 1] "
                        "(Saharia et al. 2022; 0.995 in the paper) instead of clipping (default: off)")
    if guidance:
        parser.add_argument("--guidance-scale", type=_finite_float, metavar="W",
                            help="classifier-free guidance scale; 1 is none (default: 1.0)")
    parser.add_argument("--allow-long-run", action="store_true",
                        help=f"start a run of more than {MAX_NETWORK_EVALUATIONS:.0e} network evaluations of "
                        "one image (images x evaluations per image, x2 with guidance; 200 steps for 50,000 "
                        "images is 1e+07) (default: refuse it, printing the count)")


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
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks and TensorFlow's C++ log lines (default: one-line "
                        "errors, TensorFlow's start-up chatter hidden)")
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
    train.add_argument("--dataset", type=_text, help=f"{dataset_help} (default: the preset's: "
                       f"{_preset_defaults('dataset')})")
    _add_data_dir(train)
    train.add_argument("--output-dir", required=True, metavar="DIR", type=_text,
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
    train.add_argument("--num-timesteps", type=_int_in(2), metavar="T",
                       help=f"diffusion steps T (default: the preset's: {_preset_defaults('num_timesteps')})")
    train.add_argument("--seed", type=_train_seed,
                       help="seed of weight initialization, data order and sample noise, in [0, 2**32 - 1] "
                       "(default: 0)")
    train.add_argument("--sampler", choices=samplers.sampler_names(),
                       help=f"sampler of samples.png: ddim or ddpm (ancestral, respaced to "
                       f"--sample-steps) (default: the preset's: {_preset_defaults('sampler')})")
    train.add_argument("--sample-steps", type=_positive_int,
                       help=f"sampling steps for samples.png, at most T (default: the preset's: "
                       f"{_preset_defaults('sample_steps')}, capped at T)")
    train.add_argument("--num-samples", type=_positive_int,
                       help=f"images in samples.png (default: {training.DEFAULT_NUM_SAMPLES})")
    train.add_argument("--guidance-scale", type=_finite_float, metavar="W",
                       help="classifier-free guidance for samples.png of a conditional model "
                       f"(default: the preset's: {_preset_defaults('guidance_scale', '{:g}')})")
    _add_jit_flag(train, "yes: training and samples compile with XLA; per replica under several replicas")
    train.add_argument("--strategy", choices=distribute.STRATEGIES,
                       help="where to train: auto (a reachable TPU, else the workers of TF_CONFIG, else all "
                       "local GPUs, else the CPU), tpu, gpu (all local GPUs), multiworker (TF_CONFIG), cpu; "
                       "--batch-size is the global batch, split across the replicas (default: auto)")
    train.add_argument("--mixed-precision", choices=tuple(distribute.PRECISIONS),
                       help="fp32; bf16 (mixed_bfloat16: TPUs, CPUs with AVX512_BF16 or AMX); fp16 "
                       "(mixed_float16 with loss scaling: GPUs). Normalisation, softmax, the loss, the "
                       "schedule and the EMA stay float32 (default: fp32; fixed for a run)")
    train.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                       help="recompute each ResBlock's activations in the backward pass instead of keeping "
                       "them: less memory per step, about one more forward pass of the blocks (default: off, "
                       "or the resumed run's)")
    train.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                       help="also write checkpoints/ckpt.keras every N training steps, so that a kill "
                       "loses at most N steps (default: at the end of every epoch only, at most "
                       f"{training.MAX_STEPS_PER_EPOCH} steps)")
    train.add_argument("--sample-every", type=_int_in(0), metavar="N",
                       help="every N epochs, draw 16 images with the sample-grid settings and the run's seed "
                       f"into {training.PROGRESS_DIR}/samples_stepNNNNNNN.png and TensorBoard (images), to "
                       "watch the run; 0: never (default: 1, every epoch but the last, whose grid is "
                       "samples.png)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from checkpoints/ckpt.keras (weights, "
                       "EMA, optimizer state and step) up to --steps in total; unspecified "
                       "settings come from that run (default: start a new run, which refuses a "
                       "directory that already holds one)")
    train.set_defaults(command_name="train")

    # ----------------------------------------------------------------- sample
    sample = commands.add_parser(
        "sample", help="generate images with a trained model",
        description=(
            "Generate images with a model written by `tfdiffusion train` (its EMA weights) and "
            "write a PNG grid and/or an .npz file (\"images\": uint8 [N, H, W, C]; \"labels\": "
            "int32 [N] for a class-conditional model), each atomically. Without --output and "
            "--npz, writes samples.png. Each batch's noise is drawn from --seed and the batch's "
            "offset, so the same flags give the same images."))
    sample.add_argument("--model", required=True, metavar="PATH", type=_text,
                        help="a .keras model file, a training --output-dir holding model.keras, or a "
                        "SavedModel written by `tfdiffusion export` (BASE/NAME for its latest version, or "
                        "BASE/NAME/VERSION) (required)")
    sample.add_argument("--num-images", type=_positive_int,
                        help="number of images (default: the number of --labels, else 16)")
    _add_sampling_flags(sample)
    sample.add_argument("--seed", type=_seed,
                        help="random seed, an int64; the same seed gives the same images (default: a random "
                        "seed, printed)")
    labels = sample.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=_label_list, metavar="L1,L2,...",
                        help="class of each image, repeated to --num-images (default: for a "
                        "class-conditional model, one grid row per class)")
    labels.add_argument("--label", type=_label, metavar="L",
                        help="one class for every image (default: see --labels)")
    sample.add_argument("--guidance-scale", type=_finite_float, default=1.0, metavar="W",
                        help="classifier-free guidance scale; 1 is none (default: 1.0)")
    sample.add_argument("--output", metavar="PNG", type=_text,
                        help="write a grid image here, .png (or .jpg); never over a file that is not "
                        "an earlier grid (default: samples.png unless --npz is given)")
    sample.add_argument("--npz", metavar="FILE", type=_text,
                        help="write the images (and labels) to this .npz file; never over a file that is "
                        "not an earlier sample set (default: none)")
    sample.add_argument("--batch-size", type=_positive_int,
                        help="images per network batch (default: as many as fit in memory, at most "
                        f"{DEFAULT_SAMPLE_BATCH})")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output grid or --npz file written by an earlier "
                        "sample run (default: refuse; other files are never replaced)")
    _add_jit_flag(sample, "yes")
    _add_trust_flag(sample)
    sample.set_defaults(command_name="sample")

    # --------------------------------------------------------------- evaluate
    evaluate = commands.add_parser(
        "evaluate", help="report bits/dim, losses, or the FID/KID of generated images on held-out data",
        description=(
            "Evaluate a model written by `tfdiffusion train` (its EMA weights) on a held-out split and "
            "print JSON. --metric bpd or loss: model.evaluate, reporting bpd (the variational bound in "
            "bits per dimension) when --metric bpd, the training loss, mse and vb, the number "
            "of images, and which bound estimate was used. --metric fid or kid: --num-images images "
            "generated with the sampling flags (for a class-conditional model, with the labels of the "
            "real images) against as many real images of the split, compared in a feature space: the "
            "shipped shapes network for the shapes data, Keras' InceptionV3 pool features otherwise "
            "(--features). Images are resized to the model's "
            "resolution; their channel count (and classes, for a class-conditional model) must "
            "match the model's. Progress goes to stderr, the JSON to stdout."))
    evaluate.add_argument("--model", required=True, metavar="PATH", type=_text,
                          help="a .keras model file (or a training --output-dir holding model.keras); for "
                          "fid/kid also an exported SavedModel (required)")
    evaluate.add_argument("--dataset", required=True, type=_text, help=f"{dataset_help} (required)")
    _add_data_dir(evaluate)
    evaluate.add_argument("--split", type=_text, help="held-out split: shapes 'test' or 'train', a TFDS split "
                          "such as test or train[:10%%]; not for an image folder (default: test)")
    evaluate.add_argument("--metric", choices=EVALUATE_METRICS, default="bpd",
                          help="bpd: the bound in bits/dim plus the losses; loss: the losses only, "
                          "one network call per image; fid: Frechet distance, kid: kernel (MMD) distance "
                          "between generated and real images' features (default: bpd)")
    evaluate.add_argument("--bpd-steps", type=_int_in(2), metavar="K",
                          help="bound terms per image: K >= T is the full T-step bound, K < T a "
                          "stratified K-step estimate (K network calls per image) (default: T)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=64,
                          help="images per batch (default: 64)")
    evaluate.add_argument("--num-batches", type=_positive_int,
                          help="evaluate only the first N batches (default: the whole split)")
    evaluate.add_argument("--seed", type=_seed, default=0,
                          help="seed of the evaluation noise and timesteps, or of the generated images, an "
                          "int64 (default: 0)")
    quality = evaluate.add_argument_group("fid and kid", "generated against real images (--metric fid or kid only)")
    quality.add_argument("--num-images", type=_positive_int,
                         help=f"images generated and real images compared; FID needs 2 or more, KID 2 or "
                         f"more (default: {DEFAULT_EVALUATE_IMAGES}, or the split's size if smaller)")
    quality.add_argument("--features", choices=("auto", "shapes", "inception"), default="auto",
                         help="feature space: shapes (the shipped shapes network, offline), inception "
                         "(InceptionV3 pool features, 2048-d, 299x299), auto: shapes for --dataset shapes, "
                         "else inception (default: auto)")
    quality.add_argument("--inception-weights", metavar="FILE", type=_text,
                         help="a local copy of Keras' InceptionV3 notop weights (default: the Keras cache, "
                         "~/.keras/models or $KERAS_HOME/models)")
    quality.add_argument("--download-inception", action="store_true",
                         help="download the InceptionV3 weights (87 MB) into the Keras cache if missing "
                         "(default: never reach the network)")
    quality.add_argument("--kid-subset-size", type=_int_in(2), metavar="M",
                         help="KID: images per subset, capped at --num-images (default: 1000)")
    _add_sampling_flags(quality, guidance=True)
    _add_jit_flag(evaluate, "Keras' 'auto' for bpd/loss: XLA except on CPU-only machines; yes for fid/kid")
    _add_trust_flag(quality)
    evaluate.set_defaults(command_name="evaluate")

    # ---------------------------------------------------------------- convert
    convert = commands.add_parser(
        "convert", help="convert another library's pretrained model into a .keras file",
        description=(
            "Read a diffusers UNet2DModel with its DDPM/DDIM scheduler (a pipeline folder with unet/ and "
            "scheduler/, or those files at the top level) into a tfdiffusion DiffusionModel and write it "
            "as a .keras file, atomically. No PyTorch needed. Anything the converter does not "
            "understand is an error naming the key."))
    convert.add_argument("--from-diffusers", metavar="PATH", required=True, type=_text,
                         help="diffusers model folder, or a hub id such as google/ddpm-cifar10-32 when "
                         "huggingface_hub is installed and online (required)")
    convert.add_argument("--output", metavar="FILE.keras", required=True, type=_text,
                         help="the .keras file to write (required)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace an existing --output (default: refuse)")
    convert.add_argument("--max-parameters", type=_positive_int, metavar="N",
                         help="refuse a UNet of more parameters (estimated from its config before anything is "
                         "built), or one whose weights would not fit in memory (default: 1000000000)")
    convert.set_defaults(command_name="convert")

    # ----------------------------------------------------------------- export
    export = commands.add_parser(
        "export", help="export a trained model as a SavedModel for TF Serving",
        description=(
            "Export a model written by `tfdiffusion train` (its EMA weights) as a SavedModel in TF Serving's "
            "layout, --output/VERSION, written to a hidden temporary folder and renamed into place. "
            "Signatures: generate_<sampler> for each sampler, generate (= serving_default) for "
            "--default-sampler, and denoise. Requests above --max-images images, with num_steps outside "
            "[1, T] or labels out of range are refused in the graph before any work. An existing version is "
            "never replaced without --overwrite."))
    export.add_argument("--model", required=True, metavar="PATH", type=_text,
                        help="a .keras model file (or a training --output-dir holding model.keras) (required)")
    export.add_argument("--output", required=True, metavar="BASE/NAME", type=_text,
                        help="the model directory a server watches (TF Serving's --model_base_path); the "
                        "SavedModel goes to BASE/NAME/VERSION (required)")
    export.add_argument("--version", type=_int_in(0),
                        help="integer version (default: one above the highest in --output, or 1)")
    export.add_argument("--max-images", type=_positive_int, default=16,
                        help="the largest batch one request may ask for (default: 16)")
    export.add_argument("--samplers", nargs="+", choices=samplers.sampler_names(), metavar="SAMPLER",
                        help="samplers to export, one generate_<sampler> signature each: "
                        f"{', '.join(samplers.sampler_names())} (default: all)")
    export.add_argument("--default-sampler", choices=samplers.sampler_names(), default="ddim",
                        help="the sampler of the generate and serving_default signatures (default: ddim)")
    export.add_argument("--spacing", choices=samplers.SOLVER_SPACINGS,
                        help="timestep spacing of every exported sampler; karras for the dpmpp_* and "
                        "euler/heun samplers only (default: the model's)")
    export.add_argument("--threshold", type=_float_in(0.0, strict=True), metavar="P",
                        help="dynamic thresholding of each predicted x_0 at percentile P in (0, 1] in every "
                        "exported sampler, instead of clipping (default: off)")
    _add_jit_flag(export, "no: TF Serving's CPU model server runs XLA only with --xla_cpu_compilation_enabled")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --version (default: refuse)")
    export.set_defaults(command_name="export")
    return parser



"""Bad inputs across the Python API and the command line, one table row each.

Every row must be refused before any work: the expected exception type (or
exit code 2 with one `tfdiffusion: error:` line and no traceback), a message
naming the argument, and no file changed or created in the watched folder.
`python tests/test_bad_inputs.py` prints the GOOD / WEAK / BAD count of the
table instead (GOOD: as required; WEAK: refused, but with another exception
type or a message that does not name the argument; BAD: accepted, or a file
changed).
"""

import dataclasses
import hashlib
import io
import json
import os
import sys
from typing import Any, Callable, Sequence

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tfdiffusion as tfdiff
from tfdiffusion import cli, data, distribute, images, schedules, training
from tfdiffusion.diffusion import GaussianDiffusion
from tests import strategies

T = 10


@dataclasses.dataclass
class Case:
    """One bad input: `call(env)` must raise `error` naming `names`, or (CLI) exit with `exit_code`."""

    id: str
    call: Callable[[Any], Any]
    error: Any
    names: Sequence[str]


def _unet(num_classes=3, **kwargs):
    return tfdiff.UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(4,), dropout=0.0, num_classes=num_classes, num_groups=4, **kwargs)


def _diffusion(**kwargs):
    return GaussianDiffusion(schedules.get_beta_schedule("cosine", T), **kwargs)


def _images(n=4, value=None):
    x = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3)) / 127.5 - 1
    return (np.full((n, 8, 8, 3), value) if value is not None else x).astype(np.float32)


def _dataset(images, labels=None, batch=4):
    ds = tf.data.Dataset.from_tensor_slices(images if labels is None else (images, labels))
    return ds.batch(batch)


class Env:
    """Objects the rows act on, made once: models, files, a folder that must not change."""

    def __init__(self, root):
        self.root = root
        self.watch = os.path.join(root, "watched")
        os.makedirs(self.watch)
        self.diffusion = _diffusion()
        self.model = tfdiff.DiffusionModel(_unet(), self.diffusion, ema_decay=0.9)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3))
        self.uncond = tfdiff.DiffusionModel(_unet(None), self.diffusion, label_dropout=0.0)
        self.model_path = self.path("model.keras")
        self.model.save(self.model_path)
        self.uncond_path = self.path("uncond.keras")
        self.uncond.save(self.uncond_path)
        self.grid = self.path("grid.png")
        images.save_grid(np.zeros([2, 8, 8, 3], np.uint8), self.grid)
        self.text = self.path("notes.txt")
        with open(self.text, "w") as file:
            file.write("not an image")
        self.text_as_png = _copy(self.text, self.path("notes.png"))
        self.model_as_npz = _copy(self.model_path, self.path("model.npz"))
        self.truncated = self.path("truncated.keras")
        with open(self.model_path, "rb") as source, open(self.truncated, "wb") as target:
            target.write(source.read()[:300])
        self.random_bytes = self.path("random.keras")
        with open(self.random_bytes, "wb") as file:
            file.write(np.random.default_rng(1).bytes(2000))
        self.sequential = self.path("sequential.keras")
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(self.sequential)
        self.images_dir = self.path("images")
        for name in ("a", "b"):
            os.makedirs(os.path.join(self.images_dir, name))
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 9, 9)).save(os.path.join(self.images_dir, name, f"{i}.png"))
        self.corrupt_dir = self.path("corrupt")
        os.makedirs(os.path.join(self.corrupt_dir, "a"))
        for i in range(4):
            Image.new("RGB", (8, 8), (9, 9, 9)).save(os.path.join(self.corrupt_dir, "a", f"{i}.png"))
        open(os.path.join(self.corrupt_dir, "a", "empty.png"), "wb").close()
        self.run = self.path("run")
        os.makedirs(os.path.join(self.run, "checkpoints"))
        with open(self.model_path, "rb") as source, open(os.path.join(self.run, "checkpoints", "ckpt.keras"),
                                                         "wb") as target:
            target.write(source.read())
        settings = dict(preset="shapes", dataset="shapes", data_dir=None, image_size=8, batch_size=8,
                        learning_rate=0.002, num_timesteps=T, steps=4, seed=0, sampler="ddpm", sample_steps=2,
                        num_samples=4, guidance_scale=3.0, steps_per_epoch=4)
        with open(os.path.join(self.run, "checkpoints", "run.json"), "w") as file:
            json.dump(settings, file)
        with open(os.path.join(self.run, "train_summary.json"), "w") as file:  # a finished run
            json.dump({"steps": 4}, file)

    def path(self, name):
        return os.path.join(self.watch, name)

    def snapshot(self):
        """Every file under the watched folder with its content hash and mode."""
        found = {}
        for folder, _, names in os.walk(self.watch):
            for name in names:
                full = os.path.join(folder, name)
                with open(full, "rb") as file:
                    found[full] = (hashlib.sha1(file.read()).hexdigest(), os.stat(full).st_mode)
        return found


def cli_run(*argv):
    """Runs the command in this process; returns (exit code, stderr)."""
    stderr, stdout = io.StringIO(), io.StringIO()
    real_err, real_out = sys.stderr, sys.stdout
    sys.stderr, sys.stdout = stderr, stdout
    try:
        code = cli.main([str(a) for a in argv])
    finally:
        sys.stderr, sys.stdout = real_err, real_out
    return code, stderr.getvalue()


CLI = "exit 2"  # the error of a command-line row


def _mean_color(images):
    """A stand-in feature extractor: each image's mean per channel (FID/KID rows need no network)."""
    return tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])


def _fid():
    return tfdiff.metrics.FrechetInceptionDistance(_mean_color, feature_dim=3)


def _kid():
    return tfdiff.metrics.KernelInceptionDistance(_mean_color, feature_dim=3)


def _one_image_fid():
    fid = _fid()
    fid.update_state(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))
    return fid


def _with_keras_home(folder, call):
    """Runs `call()` with $KERAS_HOME set to `folder` (an empty cache: no Inception weights)."""
    before = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = folder
    try:
        return call()
    finally:
        if before is None:
            del os.environ["KERAS_HOME"]
        else:
            os.environ["KERAS_HOME"] = before


def _hostile_saved_model(env):
    """issue 23: a SavedModel that looks like a tfdiffusion export (its description file) but writes
    `watched/leaked` when loaded and on each request: built once, outside the watched folder, so a row that
    runs any of its graph changes the watched folder."""
    if getattr(env, "hostile_model", None) is None:
        from tests import hostile_saved_model

        secret = os.path.join(env.root, "secret.txt")
        with open(secret, "w") as file:
            file.write("secret")
        env.hostile_model = os.path.join(env.root, "hostile")
        hostile_saved_model.hostile_saved_model(env.hostile_model, env.path("leaked"), secret)
    return env.hostile_model


def _nan_pipeline(env):
    """issue 23: a diffusers pipeline folder (the ddpm_layout fixture) with one NaN in `conv_in.bias`."""
    if getattr(env, "nan_pipeline", None) is None:
        import pathlib

        from safetensors.numpy import load_file, save_file

        from tests.convert.reference import make_pipeline

        folder = make_pipeline(pathlib.Path(env.root), "ddpm_layout")
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        tensors = load_file(weights)
        tensors["conv_in.bias"][0] = np.nan
        save_file(tensors, weights)
        env.nan_pipeline = str(folder)
    return env.nan_pipeline


def _nan_model(env):
    """issue 23: an unconditional model whose EMA `conv_in` bias holds one NaN, and its .keras file (both outside
    the watched folder)."""
    if getattr(env, "nan_model", None) is None:
        model = tfdiff.DiffusionModel(_unet(None), env.diffusion, label_dropout=0.0)
        bias = model.ema_network.conv_in.bias.numpy()
        bias[0] = np.nan
        model.ema_network.conv_in.bias.assign(bias)
        model.saved_path = os.path.join(env.root, "nan.keras")
        model.save(model.saved_path)
        env.nan_model = model
    return env.nan_model


def _diffusers_pipeline(env, name, unet=None, scheduler=None):
    """issue 23: the ddpm_layout diffusers fixture as a pipeline folder `env.root/NAME`, with `unet` and
    `scheduler` config keys changed (made once per name, outside the watched folder)."""
    import pathlib

    from tests.convert.reference import make_pipeline

    folder = pathlib.Path(env.root) / name
    if not folder.exists():
        built = make_pipeline(folder, "ddpm_layout")
        for changes, config in ((unet, built / "unet" / "config.json"),
                                (scheduler, built / "scheduler" / "scheduler_config.json")):
            values = json.loads(config.read_text())
            values.update(changes or {})
            config.write_text(json.dumps(values))
    return str(next(folder.iterdir()))
# issue 23: paths and CLI -- what the rows below read: links and folders made once under the (unwatched) root
TINY_TRAIN = ("--steps", 1, "--batch-size", 2, "--image-size", 8, "--num-timesteps", 10, "--sample-steps", 1,
              "--num-samples", 1, "--sample-every", 0, "--no-jit-compile")
UNWRITABLE = "/proc"  # a folder even root cannot add a file to (permission bits do not stop root)


def _tiny_settings(**kwargs):
    return training.TrainSettings(**{**dict(steps=1, batch_size=2, image_size=8, num_timesteps=10, sample_steps=1,
                                            num_samples=1, sample_every=0, jit_compile=False), **kwargs})


def _made(env, name, make):
    """`env.root/name`, made by `make(path)` the first time a row asks (rows run in any order)."""
    path = os.path.join(env.root, name)
    if not os.path.lexists(path):
        make(path)
    return path


def _link(env, name, target):
    """A symbolic link `env.root/name` to `target`."""
    return _made(env, name, lambda path: os.symlink(target, path))


def _data_linking_into_watch(env):
    """An image folder outside the watched one holding a link to a folder inside it (`linked-target`)."""
    target = env.path("linked-target")

    def make(path):
        os.makedirs(os.path.join(path, "a"))
        os.makedirs(target, exist_ok=True)  # an empty folder: no file of the watched folder changes
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 9, 9)).save(os.path.join(path, "a", f"{i}.png"))
        os.symlink(target, os.path.join(path, "more"))
    return _made(env, "linking-data", make), target


def _saved_model_standin(env):
    """A SavedModel version folder as `sample --model` recognises one; the rows are refused before it loads."""
    def make(path):
        os.makedirs(os.path.join(path, "1", "assets.extra"))
        open(os.path.join(path, "1", "saved_model.pb"), "wb").close()
    return os.path.join(_made(env, "served-standin", make), "1")


def _without_xla_cache_flag(call):
    """Runs `call()` with no cache folder in TF_XLA_FLAGS (an earlier row of this process set one)."""
    before = os.environ.pop("TF_XLA_FLAGS", None)
    try:
        return call()
    finally:
        os.environ.pop("TF_XLA_FLAGS", None)
        if before is not None:
            os.environ["TF_XLA_FLAGS"] = before


def _api_cases():
    def gd(**kwargs):
        return lambda e: GaussianDiffusion(**{"betas": schedules.get_beta_schedule("cosine", T), **kwargs})

    def gen(**kwargs):
        return lambda e: e.model.generate(**{"num_images": 2, "num_steps": 2, "jit_compile": False, **kwargs})

    def q(x=None, t=None):
        return lambda e: e.diffusion.q_sample(_images(2) if x is None else x, np.array([1, 2]) if t is None else t)

    def unet(**kwargs):
        base = dict(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(4,), dropout=0.0, num_groups=4)
        return lambda e: tfdiff.UNet(**{**base, **kwargs})

    def dm(**kwargs):
        return lambda e: tfdiff.DiffusionModel(**{"network": _unet(), "diffusion": e.diffusion, **kwargs})

    def fit(images, labels=None, model="model"):
        return lambda e: getattr(e, model).fit(_dataset(images, labels), verbose=0)

    def fit_validation(validation_data):
        return lambda e: e.model.fit(_dataset(_images(4), labels4), validation_data=validation_data, verbose=0)

    def fit_weighted(weights):
        return lambda e: e.model.fit(tf.data.Dataset.from_tensor_slices((_images(4), labels4, np.asarray(weights)))
                                     .batch(4), verbose=0)

    def zeros_fn(x, t, **kwargs):
        return tf.zeros_like(x)

    labels4 = np.array([0, 1, 2, 0], np.int32)
    beyond_int64 = 2 ** 63
    return [
        # GaussianDiffusion
        Case("diffusion-betas-string", gd(betas="cosine"), TypeError, ["betas"]),
        Case("diffusion-betas-2d", gd(betas=np.full((2, 2), 0.1)), ValueError, ["betas"]),
        Case("diffusion-betas-zero", gd(betas=np.array([0.1, 0.0, 0.1])), ValueError, ["betas"]),
        Case("diffusion-betas-nan", gd(betas=np.array([0.1, np.nan])), ValueError, ["betas"]),
        Case("diffusion-terminal-one-epsilon", gd(betas=np.array([0.1, 1.0])), ValueError, ["epsilon"]),
        Case("diffusion-mean-type", gd(model_mean_type="score"), ValueError, ["model_mean_type"]),
        Case("diffusion-var-type", gd(model_var_type="learned"), ValueError, ["model_var_type"]),
        Case("diffusion-loss-type", gd(loss_type="l1"), ValueError, ["loss_type"]),
        Case("diffusion-hybrid-fixed", gd(loss_type="hybrid"), ValueError, ["loss_type"]),
        Case("diffusion-min-snr-nan", gd(min_snr_gamma=float("nan")), ValueError, ["min_snr_gamma"]),
        Case("diffusion-min-snr-negative", gd(min_snr_gamma=-1.0), ValueError, ["min_snr_gamma"]),
        Case("diffusion-min-snr-string", gd(min_snr_gamma="5"), TypeError, ["min_snr_gamma"]),
        Case("diffusion-validate-int", gd(validate_args=1), TypeError, ["validate_args"]),
        Case("diffusion-timestep-map", gd(timestep_map=[0, 1]), ValueError, ["timestep_map"]),
        # forward process, losses, bound
        Case("q-sample-uint8", q(x=np.zeros((2, 8, 8, 3), np.uint8)), TypeError, ["x_start"]),
        Case("q-sample-0-255", q(x=np.full((2, 8, 8, 3), 200.0, np.float32)), ValueError, ["x_start"]),
        Case("q-sample-nan", q(x=_images(2, np.nan)), ValueError, ["x_start"]),
        Case("q-sample-t-float", q(t=np.array([1.0, 2.0])), TypeError, ["`t`"]),
        Case("q-sample-t-bool", q(t=np.array([True, False])), TypeError, ["`t`"]),
        Case("q-sample-t-range", q(t=np.array([1, T])), ValueError, ["`t`", f"[0, {T})"]),
        Case("q-sample-t-negative", q(t=np.array([-1, 2])), ValueError, ["`t`"]),
        Case("q-sample-t-batch", q(t=np.array([1, 2, 3])), ValueError, ["`t`"]),
        Case("q-sample-t-matrix", q(t=np.array([[1], [2]])), ValueError, ["`t`"]),
        Case("losses-t-range", lambda e: e.diffusion.training_losses(lambda x, t: x, _images(2), [0, 99]),
             ValueError, ["`t`"]),
        Case("losses-nan", lambda e: e.diffusion.training_losses(lambda x, t: x, _images(2, np.nan), [0, 1]),
             ValueError, ["x_start"]),
        Case("p-mean-var-t", lambda e: e.diffusion.p_mean_variance(lambda x, t: x, _images(2), [0, 11]),
             ValueError, ["`t`"]),
        Case("bpd-off-grid", lambda e: e.diffusion.calc_bpd_loop(lambda x, t: x, _images(2, 0.001)),
             ValueError, ["8-bit grid"]),
        Case("bpd-eval-steps-1", lambda e: e.diffusion.calc_bpd_loop(lambda x, t: x, _images(2), num_eval_steps=1),
             ValueError, ["num_eval_steps"]),
        Case("bpd-eval-steps-float", lambda e: e.diffusion.bpd_timesteps(4.0), ValueError, ["num_eval_steps"]),
        Case("ddim-steps-0", lambda e: e.diffusion.ddim_sample_loop(lambda x, t: x, [1, 8, 8, 3], num_steps=0),
             ValueError, ["num_steps"]),
        Case("ddim-eta-nan", lambda e: e.diffusion.ddim_sample_loop(lambda x, t: x, [1, 8, 8, 3], num_steps=2,
                                                                     eta=float("nan")), ValueError, ["eta"]),
        Case("ddim-noise-shape", lambda e: e.diffusion.ddim_sample_loop(lambda x, t: x, [1, 8, 8, 3], num_steps=2,
                                                                         noise=np.zeros((2, 8, 8, 3), np.float32)),
             ValueError, ["noise"]),
        Case("ddim-spacing", lambda e: e.diffusion.ddim_sample_loop(lambda x, t: x, [1, 8, 8, 3], num_steps=2,
                                                                     spacing="middle"), ValueError, ["spacing"]),
        Case("respace-steps", lambda e: e.diffusion.respace(T + 1), ValueError, ["num_steps"]),
        # schedules
        Case("schedule-name", lambda e: schedules.get_beta_schedule("quadratic", 10), ValueError, ["name"]),
        Case("schedule-T-float", lambda e: schedules.get_beta_schedule("cosine", 10.0), TypeError,
             ["num_timesteps"]),
        Case("spacing-steps-bool", lambda e: schedules.space_timesteps(10, True), TypeError, ["num_steps"]),
        # UNet
        Case("unet-image-size-0", unet(image_size=0), ValueError, ["image_size"]),
        Case("unet-image-size-bool", unet(image_size=True), TypeError, ["image_size"]),
        Case("unet-channel-mult-empty", unet(channel_mult=()), ValueError, ["channel_mult"]),
        Case("unet-channel-mult-zero", unet(channel_mult=(1, 0)), ValueError, ["channel_mult"]),
        Case("unet-attention-unreached", unet(attention_resolutions=(3,)), ValueError, ["attention_resolutions"]),
        Case("unet-groups", unet(num_groups=3), ValueError, ["num_groups"]),
        Case("unet-dropout-1", unet(dropout=1.0), ValueError, ["dropout"]),
        Case("unet-dropout-nan", unet(dropout=float("nan")), ValueError, ["dropout"]),
        Case("unet-learn-sigma-string", unet(learn_sigma="yes"), TypeError, ["learn_sigma"]),
        Case("unet-classes-0", unet(num_classes=0), ValueError, ["num_classes"]),
        # DiffusionModel
        Case("model-diffusion-string", dm(diffusion="cosine"), TypeError, ["diffusion"]),
        Case("model-ema-1", dm(ema_decay=1.0), ValueError, ["ema_decay"]),
        Case("model-ema-nan", dm(ema_decay=float("nan")), ValueError, ["ema_decay"]),
        Case("model-dropout-1", dm(label_dropout=1.0), ValueError, ["label_dropout"]),
        Case("model-timestep-sampler", dm(timestep_sampler="importance"), ValueError, ["timestep_sampler"]),
        Case("model-seed-float", dm(seed=1.5), TypeError, ["seed"]),
        Case("model-spacing", dm(spacing="middle"), ValueError, ["spacing"]),
        Case("model-image-shape", dm(image_shape=(8, 8)), ValueError, ["image_shape"]),
        # generate
        Case("generate-num-images-0", gen(num_images=0), ValueError, ["num_images"]),
        Case("generate-num-images-float", gen(num_images=2.5), TypeError, ["num_images"]),
        Case("generate-num-images-bool", gen(num_images=True), TypeError, ["num_images"]),
        Case("generate-num-images-huge", gen(num_images=10**12), ValueError, ["num_images"]),
        Case("generate-steps-0", gen(num_steps=0), ValueError, ["num_steps"]),
        Case("generate-steps-above-T", gen(num_steps=T + 1), ValueError, ["num_steps", f"[1, {T}]"]),
        Case("generate-steps-float", gen(num_steps=2.0), TypeError, ["num_steps"]),
        Case("generate-sampler", gen(sampler="euler-maruyama"), ValueError, ["sampler"]),
        Case("generate-labels-length", gen(labels=[0, 1, 2]), ValueError, ["labels"]),
        Case("generate-labels-range", gen(labels=[0, 3]), ValueError, ["labels"]),
        Case("generate-labels-float", gen(labels=[0.5, 1.7]), TypeError, ["labels"]),
        Case("generate-labels-bool", gen(labels=[True, False]), TypeError, ["labels"]),
        Case("generate-seed-float", gen(seed=1.5), TypeError, ["seed"]),
        Case("generate-seed-bool", gen(seed=True), TypeError, ["seed"]),
        Case("generate-seed-string", gen(seed="1"), TypeError, ["seed"]),
        Case("generate-guidance-nan", gen(guidance_scale=float("nan")), ValueError, ["guidance_scale"]),
        Case("generate-guidance-inf", gen(guidance_scale=float("inf")), ValueError, ["guidance_scale"]),
        Case("generate-guidance-string", gen(guidance_scale="2"), TypeError, ["guidance_scale"]),
        Case("generate-eta-nan", gen(eta=float("nan")), ValueError, ["eta"]),
        Case("generate-eta-negative", gen(eta=-1.0), ValueError, ["eta"]),
        Case("generate-eta-ddpm", gen(sampler="ddpm", eta=0.5), ValueError, ["eta"]),
        Case("generate-batch-0", gen(batch_size=0), ValueError, ["batch_size"]),
        Case("generate-spacing", gen(spacing="middle"), ValueError, ["spacing"]),
        Case("generate-uncond-labels", lambda e: e.uncond.generate(2, num_steps=2, labels=[0, 1]), ValueError,
             ["labels"]),
        Case("generate-uncond-guidance", lambda e: e.uncond.generate(2, num_steps=2, guidance_scale=2.0),
             ValueError, ["guidance_scale"]),
        # solvers (issue 11)
        Case("generate-3m-one-step", gen(sampler="dpmpp_3m", num_steps=1), ValueError, ["num_steps", "dpmpp_3m"]),
        Case("generate-2m-two-steps", gen(sampler="dpmpp_2m", num_steps=2), ValueError, ["num_steps", "at least 3"]),
        Case("generate-threshold-0", gen(threshold=0.0), ValueError, ["threshold"]),
        Case("generate-threshold-above-1", gen(threshold=1.5), ValueError, ["threshold"]),
        Case("generate-threshold-string", gen(threshold="0.9"), TypeError, ["threshold"]),
        Case("generate-karras-ddim", gen(spacing="karras"), ValueError, ["spacing"]),
        Case("generate-churn-ddim", gen(options={"churn": 1.0}), ValueError, ["churn"]),
        Case("generate-churn-negative", gen(sampler="heun", options={"churn": -1.0}), ValueError, ["churn"]),
        # metrics
        Case("fid-image-shapes-differ", lambda e: _fid().update_state(np.zeros((2, 8, 8, 3), np.uint8),
                                                                       np.zeros((2, 16, 16, 3), np.uint8)),
             ValueError, ["`real`", "`generated`"]),
        Case("kid-image-shapes-differ", lambda e: _kid().update_state(np.zeros((2, 8, 8, 3), np.uint8),
                                                                       np.zeros((2, 8, 8, 1), np.uint8)),
             ValueError, ["`real`", "`generated`"]),
        Case("fid-one-image", lambda e: _one_image_fid().result(), ValueError, ["at least 2"]),
        Case("fid-float-0-255", lambda e: _fid().update_state(np.full((2, 8, 8, 3), 200.0, np.float32),
                                                               np.zeros((2, 8, 8, 3), np.uint8)),
             ValueError, ["real"]),
        # fit
        Case("fit-image-size", fit(np.zeros((4, 16, 16, 3), np.float32), labels4), ValueError, ["shape"]),
        Case("fit-channels", fit(np.zeros((4, 8, 8, 1), np.float32), labels4), ValueError, ["shape"]),
        Case("fit-uint8", fit(np.zeros((4, 8, 8, 3), np.uint8), labels4), TypeError, ["float"]),
        Case("fit-0-255", fit(np.full((4, 8, 8, 3), 128.0, np.float32), labels4), ValueError, ["[-1, 1]"]),
        Case("fit-nan", fit(_images(4, np.nan), labels4), ValueError, ["NaN"]),
        Case("fit-float-labels", fit(_images(4), np.array([0.5, 1.7, 0.0, 1.0])), TypeError, ["labels"]),
        Case("fit-labels-range", fit(_images(4), np.array([0, 1, 2, 3], np.int32)), ValueError, ["labels"]),
        Case("fit-no-labels", fit(_images(4)), ValueError, ["labels"]),
        Case("fit-uncond-labels", fit(_images(4), labels4, model="uncond"), ValueError, ["labels"]),
        Case("fit-empty", lambda e: e.model.fit(_dataset(_images(4), labels4).take(0), verbose=0), ValueError,
             ["no batch"]),
        # data
        Case("shapes-split", lambda e: data.load_shapes("valid", 8, 4), ValueError, ["split"]),
        Case("global-batch-not-divisible", lambda e: distribute.check_global_batch(
            3, strategies.two_cpu_replicas()), ValueError, ["batch_size=3", "divisible", "2"]),
        Case("shapes-batch-0", lambda e: data.load_shapes("train", 8, 0), ValueError, ["batch_size"]),
        Case("shapes-size-4", lambda e: data.load_shapes("train", 4, 4), ValueError, ["image_size"]),
        Case("folder-missing", lambda e: data.load_image_folder(e.path("nope")), ValueError, ["nope"]),
        Case("folder-corrupt", lambda e: data.load_image_folder(e.corrupt_dir, 8, 2), ValueError, ["empty.png"]),
        Case("folder-channels", lambda e: data.load_image_folder(e.images_dir, 8, 2, channels=4), ValueError,
             ["channels"]),
        Case("tfds-unknown", lambda e: data.load_tfds("no_such_dataset_xyz", download=False), ValueError,
             ["no_such_dataset_xyz"]),
        Case("dataset-name-type", lambda e: data.load_dataset(3), TypeError, ["name"]),
        # files
        Case("grid-float", lambda e: images.save_grid(np.zeros((2, 8, 8, 3), np.float32), e.path("g.png")),
             ValueError, ["uint8"]),
        Case("grid-columns-0", lambda e: images.save_grid(np.zeros((2, 8, 8, 3), np.uint8), e.path("g.png"), 0),
             ValueError, ["columns"]),
        Case("npz-float", lambda e: images.save_npz(e.path("x.npz"), np.zeros((2, 8, 8, 3))), ValueError,
             ["uint8"]),
        Case("load-missing", lambda e: tfdiff.load_model(e.path("missing.keras")), FileNotFoundError,
             ["missing.keras"]),
        Case("load-truncated", lambda e: tfdiff.load_model(e.truncated), ValueError, ["truncated.keras"]),
        Case("load-random", lambda e: tfdiff.load_model(e.random_bytes), ValueError, ["random.keras"]),
        Case("load-not-diffusion", lambda e: tfdiff.load_model(e.sequential), ValueError, ["DiffusionModel"]),
        Case("load-folder-without-model", lambda e: tfdiff.load_model(e.images_dir), ValueError, ["model.keras"]),
        # training runs
        Case("train-resume-missing", lambda e: training.train(e.path("fresh"), resume=True), ValueError,
             ["resume"]),
        Case("train-output-is-file", lambda e: training.train(e.text), ValueError, ["output_dir"]),
        Case("train-output-in-data", lambda e: training.train(
            os.path.join(e.images_dir, "out"), training.TrainSettings(dataset=e.images_dir)), ValueError,
            ["output_dir"]),
        Case("train-holds-run", lambda e: training.train(e.run), ValueError, ["output_dir"]),
        Case("train-resume-lr", lambda e: training.train(e.run, training.TrainSettings(learning_rate=0.5),
                                                        resume=True), ValueError, ["learning_rate"]),
        Case("train-steps-float", lambda e: training.train(e.path("x"), training.TrainSettings(steps=1.5)),
             TypeError, ["steps"]),
        Case("train-guidance-nan", lambda e: training.train(
            e.path("x"), training.TrainSettings(guidance_scale=float("nan"))), ValueError, ["guidance_scale"]),
        # issue 23: fit and generate inputs
        # -- seeds beyond int64, refused up front by validation.check_seed (not inside TensorFlow)
        Case("generate-seed-beyond-int64", gen(seed=beyond_int64), ValueError, ["`seed`", "2**63 - 1"]),
        Case("generate-seed-below-int64", gen(seed=-beyond_int64 - 1), ValueError, ["`seed`", "-2**63"]),
        Case("model-seed-beyond-int64", dm(seed=beyond_int64), ValueError, ["`seed`", "2**63 - 1"]),
        Case("model-evaluation-seed-beyond-int64", lambda e: e.model.set_evaluation_seed(beyond_int64), ValueError,
             ["`seed`"]),
        Case("q-sample-seed-beyond-int64", lambda e: e.diffusion.q_sample(_images(2), [1, 2], seed=beyond_int64),
             ValueError, ["`seed`"]),
        Case("q-sample-seed-pair-beyond-int64", lambda e: e.diffusion.q_sample(
            _images(2), [1, 2], seed=[beyond_int64, 0]), ValueError, ["`seed`"]),
        Case("losses-seed-beyond-int64", lambda e: e.diffusion.training_losses(zeros_fn, _images(2), [1, 2],
                                                                        seed=beyond_int64), ValueError, ["`seed`"]),
        Case("p-sample-loop-seed-beyond-int64", lambda e: e.diffusion.p_sample_loop(
            zeros_fn, [1, 8, 8, 3], seed=beyond_int64), ValueError, ["`seed`"]),
        Case("ddim-seed-beyond-int64", lambda e: e.diffusion.ddim_sample_loop(zeros_fn, [1, 8, 8, 3], num_steps=2,
                                                                       seed=beyond_int64), ValueError, ["`seed`"]),
        Case("bpd-seed-beyond-int64", lambda e: e.diffusion.calc_bpd_loop(zeros_fn, _images(2), seed=beyond_int64),
             ValueError, ["`seed`"]),
        Case("bpd-timesteps-seed-beyond-int64", lambda e: e.diffusion.bpd_timesteps(4, seed=beyond_int64), ValueError,
             ["`seed`"]),
        Case("sampler-seed-beyond-int64", lambda e: tfdiff.get_sampler("ddim")(e.diffusion).sample(
            zeros_fn, np.zeros((1, 8, 8, 3), np.float32), 2, seed=beyond_int64), ValueError, ["`seed`"]),
        Case("shapes-seed-beyond-int64", lambda e: data.load_shapes("train", 8, 4, seed=beyond_int64), ValueError,
             ["`seed`"]),
        Case("shapes-seed-float", lambda e: data.load_shapes("train", 8, 4, seed=1.5), TypeError, ["`seed`"]),
        Case("folder-seed-beyond-int64", lambda e: data.load_image_folder(e.images_dir, 8, 2, seed=beyond_int64),
             ValueError, ["`seed`"]),
        Case("tfds-seed-beyond-int64", lambda e: data.load_tfds("no_such_dataset_xyz", seed=beyond_int64,
                                                                download=False), ValueError, ["`seed`"]),
        Case("dataset-seed-beyond-int64", lambda e: data.load_dataset("shapes", image_size=8, batch_size=4,
                                                               seed=beyond_int64), ValueError, ["`seed`"]),
        Case("sample-grid-seed-beyond-int64", lambda e: tfdiff.callbacks.SampleGrid(e.path("grid"), seed=beyond_int64),
             ValueError, ["`seed`"]),
        Case("make-shapes-seed-beyond-int64", lambda e: tfdiff.make_shapes(2, 8, seed=2 ** 70), ValueError, ["`seed`"]),
        Case("build-model-seed-beyond-int64", lambda e: tfdiff.build_model("shapes", seed=beyond_int64), ValueError,
             ["`seed`"]),
        Case("kid-seed-beyond-int64", lambda e: tfdiff.metrics.KernelInceptionDistance(_mean_color, feature_dim=3,
                                                                              seed=beyond_int64), ValueError,
             ["`seed`"]),
        Case("kid-function-seed-beyond-int64", lambda e: tfdiff.metrics.kernel_inception_distance(
            np.zeros((4, 3)), np.zeros((4, 3)), seed=beyond_int64), ValueError, ["`seed`"]),
        Case("shapes-network-seed-beyond-int64", lambda e: tfdiff.features.build_shapes_network(seed=beyond_int64),
             ValueError, ["`seed`"]),
        Case("serving-inputs-seed-beyond-int64", lambda e: tfdiff.serving.generate_inputs(
            beyond_int64, 2, num_images=2), ValueError, ["`seed`"]),
        # -- callbacks checked before the work
        Case("generate-progress-not-callable", gen(progress=5), TypeError, ["`progress`"]),
        Case("generate-progress-one-argument", gen(progress=lambda done: None), TypeError,
             ["`progress`", "progress(done, total)"]),
        Case("sample-grid-sampler", lambda e: tfdiff.callbacks.SampleGrid(e.path("grid"), sampler="euler-maruyama"),
             ValueError, ["`sampler`"]),
        Case("sample-grid-metric-names-string", lambda e: tfdiff.callbacks.SampleGrid(
            e.path("grid"), metric_names="fid"), TypeError, ["`metric_names`", "not one string"]),
        Case("sample-grid-feature-extractor-not-callable", lambda e: tfdiff.callbacks.SampleGrid(
            e.path("grid"), real_images=np.zeros((4, 8, 8, 3), np.uint8), feature_extractor="inception"), TypeError,
             ["`feature_extractor`"]),
        Case("guidance-model-fn-not-callable", lambda e: tfdiff.classifier_free_guidance(5, 2.0, 3, 3), TypeError,
             ["`model_fn`"]),
        Case("guidance-scale-string", lambda e: tfdiff.classifier_free_guidance(zeros_fn, "2", 3, 3), TypeError,
             ["`guidance_scale`"]),
        Case("guidance-scale-nan", lambda e: tfdiff.classifier_free_guidance(zeros_fn, float("nan"), 3, 3),
             ValueError, ["`guidance_scale`"]),
        # -- validation_data: checked before the first epoch, named
        Case("fit-validation-image-size", fit_validation(_dataset(np.zeros((4, 16, 16, 3), np.float32), labels4)),
             ValueError, ["`validation_data`", "[B, 8, 8, 3]"]),
        Case("fit-validation-uint8", fit_validation(_dataset(np.zeros((4, 8, 8, 3), np.uint8), labels4)), TypeError,
             ["`validation_data`", "float"]),
        Case("fit-validation-float-labels", fit_validation(_dataset(_images(4), np.zeros(4, np.float32))),
             TypeError, ["`validation_data`", "labels"]),
        Case("fit-validation-no-labels", fit_validation(_dataset(_images(4))), ValueError,
             ["`validation_data`", "labels"]),
        Case("fit-validation-nan", fit_validation(_dataset(_images(4, np.nan), labels4)), ValueError,
             ["`validation_data`", "NaN"]),
        Case("fit-validation-arrays-image-size", fit_validation((np.zeros((4, 16, 16, 3), np.float32), labels4)),
             ValueError, ["`validation_data`", "[B, 8, 8, 3]"]),
        # -- a learned-variance network with a fixed-variance diffusion (or the reverse), at construction
        Case("model-learn-sigma-fixed-variances", dm(network=_unet(learn_sigma=True)), ValueError,
             ["`network`", "learn_sigma=True", "`diffusion`", "model_var_type='fixed_small'"]),
        Case("model-fixed-network-learned-variances", lambda e: tfdiff.DiffusionModel(
            _unet(), _diffusion(model_var_type="learned_range", loss_type="hybrid")), ValueError,
             ["`network`", "learn_sigma=False", "`diffusion`", "model_var_type='learned_range'"]),
        Case("model-network-not-keras", dm(network="unet"), TypeError, ["`network`"]),
        # -- sample weights: finite, >= 0, one per example; Keras' batch order
        Case("fit-sample-weight-negative", fit_weighted([1, -1, 1, 1]), ValueError, ["`sample_weight`", ">= 0"]),
        Case("fit-sample-weight-nan", fit_weighted([1, np.nan, 1, 1]), ValueError, ["`sample_weight`", "finite"]),
        Case("fit-sample-weight-inf", fit_weighted([1, np.inf, 1, 1]), ValueError, ["`sample_weight`", "finite"]),
        Case("fit-sample-weight-bool", fit_weighted([True, False, True, True]), TypeError, ["`sample_weight`"]),
        Case("fit-sample-weight-matrix", fit_weighted(np.ones((4, 2))), ValueError, ["`sample_weight`", "[B]"]),
        Case("fit-uncond-images-and-weights", fit(_images(4), np.ones(4, np.float32), model="uncond"), ValueError,
             ["labels", "(images, None, sample_weight)"]),
        Case("fit-four-parts", lambda e: e.model.fit(tf.data.Dataset.from_tensor_slices(
            (_images(4), labels4, np.ones(4, np.float32), labels4)).batch(4), verbose=0), ValueError,
             ["(images, labels, sample_weight)", "4 parts"]),
        # -- strings where a sequence is expected, and other arguments the audit found
        Case("export-samplers-string", lambda e: tfdiff.export_saved_model(e.model, e.path("served"), samplers="ddim"),
             TypeError, ["`samplers`", "not one string"]),
        Case("build-model-image-size-0", lambda e: tfdiff.build_model("shapes", image_size=0), ValueError,
             ["`image_size`"]),
        Case("build-model-channels-bool", lambda e: tfdiff.build_model("shapes", channels=True), TypeError,
             ["`channels`"]),
        Case("folder-channels-bool", lambda e: data.load_image_folder(e.images_dir, 8, 2, channels=True), ValueError,
             ["`channels`"]),
        Case("folder-shuffle-string", lambda e: data.load_image_folder(e.images_dir, 8, 2, shuffle="no"), TypeError,
             ["`shuffle`"]),
        Case("shapes-repeat-int", lambda e: data.load_shapes("train", 8, 4, repeat=1), TypeError, ["`repeat`"]),
        Case("dataset-training-string", lambda e: data.load_dataset("shapes", image_size=8, batch_size=4,
                                                                    training="no"), TypeError, ["`training`"]),
        Case("register-sampler-not-a-class", lambda e: tfdiff.register_sampler(5), TypeError, ["Sampler"]),
        Case("sampler-diffusion-string", lambda e: tfdiff.get_sampler("ddim")("cosine"), TypeError, ["`diffusion`"]),
        Case("q-sample-noise-shape", lambda e: e.diffusion.q_sample(_images(2), [1, 2],
                                                                    noise=np.zeros((3, 8, 8, 3), np.float32)),
             ValueError, ["`noise`"]),
        Case("losses-noise-shape", lambda e: e.diffusion.training_losses(zeros_fn, _images(2), [1, 2],
                                                                         noise=np.zeros((3, 8, 8, 3), np.float32)),
             ValueError, ["`noise`"]),
        Case("load-model-not-a-path", lambda e: tfdiff.load_model(5), TypeError, ["`path`"]),
        # issue 23: saved-model op check
        Case("load-saved-model-writes-files", lambda e: tfdiff.load_saved_model(_hostile_saved_model(e)),
             ValueError, ["WriteFile", "ReadFile", "signature 'generate_ddim'", "trust_graph=True"]),
        Case("load-generator-saved-model-writes-files", lambda e: tfdiff.load_generator(_hostile_saved_model(e)),
             ValueError, ["WriteFile", "the init op"]),
        # issue 23: non-finite weights and images
        Case("from-diffusers-nan-weight", lambda e: tfdiff.from_diffusers(_nan_pipeline(e)), ValueError,
             ["'conv_in.bias'", "1 NaN or infinite value(s)"]),
        Case("generate-nan-weights", lambda e: _nan_model(e).generate(2, num_steps=2, jit_compile=False),
             ValueError, ["2 of 2 generated images hold NaN", "conv_in/bias"]),
        Case("generate-on-non-finite-choice", gen(on_non_finite="ignore"), ValueError, ["on_non_finite"]),
        # issue 23: from_diffusers config values under the config's keys; the size estimated before building
        Case("from-diffusers-layers-per-block-0", lambda e: tfdiff.from_diffusers(_diffusers_pipeline(
            e, "layers0", unet=dict(layers_per_block=0))), ValueError, ["layers_per_block"]),
        Case("from-diffusers-sample-size-0", lambda e: tfdiff.from_diffusers(_diffusers_pipeline(
            e, "size0", unet=dict(sample_size=0))), ValueError, ["sample_size=0"]),
        Case("from-diffusers-groups-not-dividing", lambda e: tfdiff.from_diffusers(_diffusers_pipeline(
            e, "groups3", unet=dict(norm_num_groups=3))), ValueError, ["norm_num_groups=3", "block_out_channels"]),
        Case("from-diffusers-huge-channels", lambda e: tfdiff.from_diffusers(_diffusers_pipeline(
            e, "huge", unet=dict(block_out_channels=[100000], down_block_types=["DownBlock2D"],
                                 up_block_types=["UpBlock2D"]))), ValueError,
             ["block_out_channels=[100000]", "estimated", "max_parameters"]),
        Case("from-diffusers-trained-betas-nan", lambda e: tfdiff.from_diffusers(_diffusers_pipeline(
            e, "betas-nan", scheduler=dict(num_train_timesteps=2, trained_betas=[0.1, float("nan")]))), ValueError,
             ["trained_betas"]),
        # issue 23: paths and CLI
        Case("train-output-in-data-through-link", lambda e: training.train(
            os.path.join(e.images_dir, "runx"), _tiny_settings(dataset=_link(e, "images-link", e.images_dir))),
            ValueError, ["output_dir", "dataset", "images-link"]),
        Case("train-output-holds-data", lambda e: training.train(e.watch, _tiny_settings(dataset=e.images_dir)),
             ValueError, ["output_dir", "dataset", "does not hold it"]),
        Case("train-output-in-a-folder-the-data-links-to", lambda e: training.train(
            os.path.join(_data_linking_into_watch(e)[1], "run"),
            _tiny_settings(dataset=_data_linking_into_watch(e)[0])), ValueError, ["output_dir", "dataset", "link"]),
        Case("train-seed-beyond-numpy", lambda e: training.train(e.path("x"), _tiny_settings(seed=2**32)),
             ValueError, ["seed", "4294967295"]),
        Case("train-seed-negative", lambda e: training.train(e.path("x"), _tiny_settings(seed=-1)),
             ValueError, ["seed"]),
        Case("train-dataset-int", lambda e: training.train(e.path("x"), _tiny_settings(dataset=3)), TypeError,
             ["dataset"]),
        Case("train-num-samples-too-many", lambda e: training.train(e.path("x"), _tiny_settings(num_samples=10**9)),
             ValueError, ["num_samples"]),
        Case("train-resume-tfds-name-shadowed-by-folder", lambda e: training.train(
            _made(e, "tfds-run", lambda path: _tfds_run(e, path)), resume=True), ValueError,
            ["resume", "TFDS", "watched/images"]),
    ]


def _cli_cases():
    def sample(*flags, model="model_path"):
        return lambda e: cli_run("sample", "--model", getattr(e, model), "--steps", 2, "--no-jit-compile", *flags)

    def train(*flags):
        return lambda e: cli_run("train", "--steps", 2, "--no-jit-compile", *flags)

    def evaluate(*flags, model="model_path"):
        return lambda e: cli_run("evaluate", "--model", getattr(e, model), "--dataset", "shapes", "--no-jit-compile",
                                 *flags)

    return [
        # sample: outputs never clobber inputs
        Case("cli-sample-output-is-model", lambda e: cli_run("sample", "--model", e.model_path, "--output",
                                                             e.model_path), CLI, ["--output"]),
        Case("cli-sample-output-text", sample("--output", "notes.txt"), CLI, ["--output"]),
        Case("cli-sample-output-existing-text-png", lambda e: cli_run(
            "sample", "--model", e.model_path, "--output", e.text_as_png), CLI, ["--output"]),
        Case("cli-sample-output-exists", lambda e: cli_run("sample", "--model", e.model_path, "--output", e.grid),
             CLI, ["--output", "--overwrite"]),
        Case("cli-sample-npz-not-npz", lambda e: cli_run("sample", "--model", e.model_path, "--npz", e.grid),
             CLI, ["--npz"]),
        Case("cli-sample-npz-over-model", lambda e: cli_run("sample", "--model", e.model_path, "--npz",
                                                            e.model_as_npz), CLI, ["--npz"]),
        Case("cli-sample-npz-under-a-file", lambda e: cli_run("sample", "--model", e.model_path, "--npz",
                                                              os.path.join(e.text, "x.npz")), CLI,
             ["--npz", "is a file"]),
        Case("cli-sample-output-dir-missing", lambda e: cli_run("sample", "--model", e.model_path, "--output",
                                                                e.path("nowhere/x.png")), CLI, ["--output"]),
        # sample: numbers
        Case("cli-sample-guidance-nan", sample("--guidance-scale", "nan"), CLI, ["--guidance-scale"]),
        Case("cli-sample-guidance-inf", sample("--guidance-scale", "inf"), CLI, ["--guidance-scale"]),
        Case("cli-sample-eta-nan", sample("--eta", "nan"), CLI, ["--eta"]),
        Case("cli-sample-eta-negative", sample("--eta", "-1"), CLI, ["--eta"]),
        Case("cli-sample-eta-ddpm", sample("--eta", "0.5", "--sampler", "ddpm"), CLI, ["--eta"]),
        Case("cli-sample-steps-0", sample("--steps", 0), CLI, ["--steps"]),
        Case("cli-sample-steps-above-T", sample("--steps", T + 1), CLI, ["--steps"]),
        Case("cli-sample-labels-range", sample("--labels", "0,9"), CLI, ["labels"]),
        Case("cli-sample-labels-text", sample("--labels", "a,b"), CLI, ["--labels"]),
        Case("cli-sample-label-negative", sample("--label", -1), CLI, ["labels"]),
        Case("cli-sample-num-images-0", sample("--num-images", 0), CLI, ["--num-images"]),
        Case("cli-sample-num-images-huge", sample("--num-images", 10**12), CLI, ["--num-images", "GiB"]),
        Case("cli-sample-batch-0", sample("--batch-size", 0), CLI, ["--batch-size"]),
        Case("cli-sample-seed-float", sample("--seed", "1.5"), CLI, ["--seed"]),
        Case("cli-sample-sampler", sample("--sampler", "euler-maruyama"), CLI, ["--sampler"]),
        Case("cli-sample-uncond-labels", sample("--label", 1, model="uncond_path"), CLI, ["labels"]),
        Case("cli-sample-model-missing", lambda e: cli_run("sample", "--model", e.path("none.keras")), CLI,
             ["--model"]),
        Case("cli-sample-model-truncated", lambda e: cli_run("sample", "--model", e.truncated), CLI, ["--model"]),
        Case("cli-sample-model-random", lambda e: cli_run("sample", "--model", e.random_bytes), CLI, ["--model"]),
        # train
        Case("cli-train-steps-0", train("--output-dir", "r", "--steps", 0), CLI, ["--steps"]),
        Case("cli-train-lr-nan", train("--output-dir", "r", "--learning-rate", "nan"), CLI, ["--learning-rate"]),
        Case("cli-train-lr-negative", train("--output-dir", "r", "--learning-rate", "-1"), CLI,
             ["--learning-rate"]),
        Case("cli-train-guidance-nan", train("--output-dir", "r", "--guidance-scale", "nan"), CLI,
             ["--guidance-scale"]),
        Case("cli-train-batch-0", train("--output-dir", "r", "--batch-size", 0), CLI, ["--batch-size"]),
        Case("cli-train-preset", train("--output-dir", "r", "--preset", "nope"), CLI, ["--preset"]),
        Case("cli-train-output-file", lambda e: cli_run("train", "--output-dir", e.text), CLI, ["--output-dir"]),
        Case("cli-train-holds-run", lambda e: cli_run("train", "--output-dir", e.run), CLI, ["--resume"]),
        Case("cli-train-resume-missing", lambda e: cli_run("train", "--output-dir", e.path("new"), "--resume"),
             CLI, ["--resume"]),
        Case("cli-train-resume-preset", lambda e: cli_run("train", "--output-dir", e.run, "--resume", "--preset",
                                                          "shapes-hybrid"), CLI, ["preset"]),
        Case("cli-train-resume-batch", lambda e: cli_run("train", "--output-dir", e.run, "--resume",
                                                         "--batch-size", 16), CLI, ["batch_size"]),
        Case("cli-train-resume-lr", lambda e: cli_run("train", "--output-dir", e.run, "--resume",
                                                      "--learning-rate", "0.5"), CLI, ["learning_rate"]),
        Case("cli-train-output-in-data", lambda e: cli_run("train", "--output-dir", os.path.join(e.images_dir, "r"),
                                                           "--dataset", e.images_dir), CLI, ["--output-dir"]),
        Case("cli-train-corrupt-folder", lambda e: cli_run("train", "--output-dir", e.path("r2"), "--dataset",
                                                           e.corrupt_dir, "--batch-size", 2, "--image-size", 8),
             CLI, ["empty.png"]),
        Case("cli-train-strategy-unknown", train("--output-dir", "r", "--strategy", "mirrored"), CLI,
             ["--strategy", "mirrored"]),
        Case("cli-train-strategy-tpu-unreachable", train("--output-dir", "r", "--strategy", "tpu"), CLI,
             ["strategy", "no TPU is reachable"]),
        Case("cli-train-multiworker-without-tf-config", train("--output-dir", "r", "--strategy", "multiworker"),
             CLI, ["TF_CONFIG"]),
        Case("cli-train-fp16-without-gpu", train("--output-dir", "r", "--mixed-precision", "fp16"), CLI,
             ["fp16", "GPU"]),
        Case("cli-train-precision-unknown", train("--output-dir", "r", "--mixed-precision", "int8"), CLI,
             ["--mixed-precision", "int8"]),
        Case("cli-train-unknown-dataset", train("--output-dir", "r", "--dataset", "no_such_dataset_xyz"), CLI,
             ["no_such_dataset_xyz"]),
        Case("cli-train-timesteps-1", train("--output-dir", "r", "--num-timesteps", 1), CLI, ["--num-timesteps"]),
        Case("cli-train-sample-steps", train("--output-dir", "r", "--num-timesteps", 10, "--sample-steps", 11),
             CLI, ["--sample-steps"]),
        Case("cli-train-steps-and-epochs", train("--output-dir", "r", "--epochs", 1), CLI, ["--epochs"]),
        # evaluate, convert
        Case("cli-evaluate-bpd-steps-1", lambda e: cli_run("evaluate", "--model", e.model_path, "--dataset",
                                                           "shapes", "--bpd-steps", 1), CLI, ["--bpd-steps"]),
        Case("cli-evaluate-bpd-with-loss", lambda e: cli_run("evaluate", "--model", e.model_path, "--dataset",
                                                             "shapes", "--metric", "loss", "--bpd-steps", 4),
             CLI, ["--bpd-steps"]),
        Case("cli-evaluate-split-folder", lambda e: cli_run("evaluate", "--model", e.model_path, "--dataset",
                                                            e.images_dir, "--split", "test"), CLI, ["split"]),
        Case("cli-evaluate-model-missing", lambda e: cli_run("evaluate", "--model", e.path("x.keras"),
                                                             "--dataset", "shapes"), CLI, ["--model"]),
        # solver flags (issue 11)
        Case("cli-sample-spacing", sample("--spacing", "middle"), CLI, ["--spacing"]),
        Case("cli-sample-karras-ddim", sample("--spacing", "karras"), CLI, ["--spacing", "dpmpp_2m"]),
        Case("cli-sample-3m-one-step", sample("--sampler", "dpmpp_3m", "--steps", 1), CLI, ["--steps", "dpmpp_3m"]),
        Case("cli-sample-threshold-0", sample("--threshold", "0"), CLI, ["--threshold"]),
        Case("cli-sample-threshold-above-1", sample("--threshold", "1.5"), CLI, ["--threshold"]),
        Case("cli-sample-churn-ddim", sample("--churn", "1"), CLI, ["--churn"]),
        # evaluate --metric fid|kid
        Case("cli-evaluate-fid-one-image", evaluate("--metric", "fid", "--num-images", 1), CLI, ["--num-images"]),
        Case("cli-evaluate-kid-num-images-0", evaluate("--metric", "kid", "--num-images", 0), CLI,
             ["--num-images"]),
        Case("cli-evaluate-fid-too-many-images", evaluate("--metric", "fid", "--num-images", 10**7,
                                                          model="uncond_path"), CLI, ["--num-images"]),
        Case("cli-evaluate-sampler-with-bpd", evaluate("--metric", "bpd", "--sampler", "heun"), CLI, ["--sampler"]),
        Case("cli-evaluate-num-images-with-loss", evaluate("--metric", "loss", "--num-images", 8), CLI,
             ["--num-images"]),
        Case("cli-evaluate-num-batches-with-fid", evaluate("--metric", "fid", "--num-batches", 2), CLI,
             ["--num-batches"]),
        Case("cli-evaluate-bpd-steps-with-kid", evaluate("--metric", "kid", "--bpd-steps", 4), CLI, ["--bpd-steps"]),
        Case("cli-evaluate-kid-subset-1", evaluate("--metric", "kid", "--kid-subset-size", 1), CLI,
             ["--kid-subset-size"]),
        Case("cli-evaluate-kid-subset-with-fid", evaluate("--metric", "fid", "--kid-subset-size", 8), CLI,
             ["--kid-subset-size"]),
        Case("cli-evaluate-metric", evaluate("--metric", "is"), CLI, ["--metric"]),
        Case("cli-evaluate-3m-one-step", evaluate("--metric", "fid", "--sampler", "dpmpp_3m", "--steps", 1), CLI,
             ["--steps", "dpmpp_3m"]),
        Case("cli-evaluate-threshold-above-1", evaluate("--metric", "fid", "--threshold", "2"), CLI, ["--threshold"]),
        Case("cli-evaluate-inception-file-missing", lambda e: cli_run(
            "evaluate", "--model", e.model_path, "--dataset", "shapes", "--metric", "fid", "--features", "inception",
            "--inception-weights", e.path("none.h5")), CLI, ["--inception-weights", "none.h5"]),
        Case("cli-evaluate-inception-not-cached", lambda e: _with_keras_home(e.path("keras-home"), lambda: cli_run(
            "evaluate", "--model", e.model_path, "--dataset", "shapes", "--metric", "kid", "--features",
            "inception")), CLI, ["--features inception", "--download-inception", "--inception-weights"]),
        Case("cli-evaluate-inception-weights-with-shapes", evaluate("--metric", "fid", "--inception-weights",
                                                                    "w.h5"), CLI, ["--inception-weights"]),
        Case("cli-export-spacing-karras", lambda e: cli_run("export", "--model", e.model_path, "--output",
                                                            e.path("served"), "--spacing", "karras"), CLI,
             ["--spacing", "ddim"]),
        Case("cli-export-threshold-above-1", lambda e: cli_run("export", "--model", e.model_path, "--output",
                                                               e.path("served"), "--threshold", "1.5"), CLI,
             ["--threshold"]),
        Case("cli-export-max-images-0", lambda e: cli_run("export", "--model", e.model_path, "--output",
                                                          e.path("served"), "--max-images", 0), CLI,
             ["--max-images"]),
        Case("cli-export-version-negative", lambda e: cli_run("export", "--model", e.model_path, "--output",
                                                              e.path("served"), "--version", -1), CLI, ["--version"]),
        Case("cli-export-sampler", lambda e: cli_run("export", "--model", e.model_path, "--output",
                                                     e.path("served"), "--samplers", "euler-maruyama"), CLI,
             ["--samplers"]),
        Case("cli-export-model-truncated", lambda e: cli_run("export", "--model", e.truncated, "--output",
                                                             e.path("served")), CLI, ["--model"]),
        Case("cli-convert-missing", lambda e: cli_run("convert", "--from-diffusers", e.path("none"), "--output",
                                                      e.path("c.keras")), CLI, ["none"]),
        Case("cli-convert-output-exists", lambda e: cli_run("convert", "--from-diffusers", e.images_dir,
                                                            "--output", e.model_path), CLI, ["--overwrite"]),
        # issue 23: saved-model op check
        Case("cli-sample-saved-model-writes-files", lambda e: cli_run(
            "sample", "--model", _hostile_saved_model(e), "--steps", 1, "--npz", e.path("hostile.npz")), CLI,
             ["--model", "WriteFile", "--trust-model"]),
        Case("cli-evaluate-saved-model-writes-files", lambda e: cli_run(
            "evaluate", "--model", _hostile_saved_model(e), "--dataset", "shapes", "--metric", "kid",
            "--features", "shapes", "--num-images", 4, "--steps", 1, "--no-jit-compile"), CLI,
             ["--model", "WriteFile"]),
        Case("cli-evaluate-trust-model-with-bpd", evaluate("--trust-model"), CLI, ["--trust-model", "fid"]),
        # issue 23: non-finite weights and images
        Case("cli-convert-nan-weight", lambda e: cli_run("convert", "--from-diffusers", _nan_pipeline(e),
                                                         "--output", e.path("nan.keras")), CLI, ["'conv_in.bias'"]),
        Case("cli-sample-nan-weights", lambda e: cli_run(
            "sample", "--model", _nan_model(e).saved_path, "--steps", 2, "--no-jit-compile", "--npz",
            e.path("nan.npz")), CLI, ["cannot sample", "NaN or infinite", "conv_in/bias"]),
        # issue 23: from_diffusers config values under the config's keys; the size estimated before building
        Case("cli-convert-huge-channels", lambda e: cli_run(
            "convert", "--from-diffusers", _diffusers_pipeline(
                e, "huge", unet=dict(block_out_channels=[100000], down_block_types=["DownBlock2D"],
                                     up_block_types=["UpBlock2D"])), "--output", e.path("huge.keras")), CLI,
             ["block_out_channels=[100000]", "--max-parameters"]),
        Case("cli-convert-layers-per-block-0", lambda e: cli_run(
            "convert", "--from-diffusers", _diffusers_pipeline(e, "layers0", unet=dict(layers_per_block=0)),
            "--output", e.path("layers0.keras")), CLI, ["layers_per_block"]),
        # issue 23: paths and CLI
        # outputs inside inputs, under any spelling
        Case("cli-train-output-in-data-through-link", lambda e: cli_run(
            "train", "--dataset", _link(e, "images-link", e.images_dir), "--output-dir",
            os.path.join(e.images_dir, "runx"), *TINY_TRAIN), CLI, ["--output-dir", "--dataset", "images-link"]),
        Case("cli-train-output-a-link-into-data", lambda e: cli_run(
            "train", "--dataset", e.images_dir, "--output-dir",
            os.path.join(_link(e, "class-a-link", os.path.join(e.images_dir, "a")), "r"), *TINY_TRAIN), CLI,
             ["--output-dir", "--dataset", "class-a-link"]),
        Case("cli-train-output-dotdot-after-a-link", lambda e: cli_run(
            # textually root/r, really images/r: `..` applies after the link
            "train", "--dataset", e.images_dir, "--output-dir",
            os.path.join(_link(e, "class-a-link", os.path.join(e.images_dir, "a")), "..", "r"), *TINY_TRAIN), CLI,
             ["--output-dir", "--dataset"]),
        Case("cli-train-output-holds-data", lambda e: cli_run(
            "train", "--dataset", os.path.relpath(e.images_dir), "--output-dir", e.watch, *TINY_TRAIN), CLI,
             ["--output-dir", "--dataset", "does not hold it"]),
        Case("cli-train-output-in-a-folder-the-data-links-to", lambda e: cli_run(
            "train", "--dataset", _data_linking_into_watch(e)[0], "--output-dir",
            os.path.join(_data_linking_into_watch(e)[1], "run"), *TINY_TRAIN), CLI,
             ["--output-dir", "--dataset", "link"]),
        Case("cli-sample-output-into-saved-model", lambda e: cli_run(
            "sample", "--model", _saved_model_standin(e), "--output",
            os.path.join(_saved_model_standin(e), "grid.png")), CLI, ["--output", "--model"]),
        Case("cli-sample-npz-into-saved-model", lambda e: cli_run(
            "sample", "--model", _saved_model_standin(e), "--npz",
            os.path.join(_saved_model_standin(e), "variables", "..", "x.npz")), CLI, ["--npz", "--model"]),
        Case("cli-evaluate-cache-in-data-through-link", lambda e: _without_xla_cache_flag(lambda: cli_run(
            "evaluate", "--model", e.model_path, "--dataset", e.images_dir, "--compilation-cache",
            os.path.join(_link(e, "images-link", e.images_dir), "xla"))), CLI, ["--compilation-cache", "--dataset"]),
        Case("cli-train-cache-in-data", lambda e: _without_xla_cache_flag(lambda: cli_run(
            "train", "--dataset", e.images_dir, "--output-dir", e.path("r-cache"), "--compilation-cache",
            os.path.join(e.images_dir, "xla"), *TINY_TRAIN)), CLI, ["--compilation-cache", "--dataset"]),
        Case("cli-cache-a-file-names-the-flag", lambda e: _without_xla_cache_flag(lambda: cli_run(
            "sample", "--model", e.model_path, "--output", e.path("g.png"), "--compilation-cache", e.text)), CLI,
             ["--compilation-cache", "is a file"]),
        # outputs that cannot be written: refused before the work, naming the flag
        Case("cli-sample-output-unwritable", sample("--num-images", 1, "--output",
                                                    os.path.join(UNWRITABLE, "tfdiffusion-grid.png")), CLI,
             ["--output", UNWRITABLE]),
        Case("cli-sample-npz-unwritable", sample("--num-images", 1, "--npz", os.path.join(UNWRITABLE, "x.npz")), CLI,
             ["--npz", UNWRITABLE]),
        Case("cli-export-output-unwritable", lambda e: cli_run("export", "--model", e.model_path, "--output",
                                                               os.path.join(UNWRITABLE, "served"), "--samplers",
                                                               "ddim"), CLI, ["--output", UNWRITABLE]),
        Case("cli-convert-output-unwritable", lambda e: cli_run("convert", "--from-diffusers", e.path("none"),
                                                                "--output", os.path.join(UNWRITABLE, "c.keras")),
             CLI, ["--output", UNWRITABLE]),
        Case("cli-cache-unwritable", lambda e: _without_xla_cache_flag(lambda: cli_run(
            "sample", "--model", e.model_path, "--output", e.path("g.png"), "--compilation-cache", UNWRITABLE)),
             CLI, ["--compilation-cache", UNWRITABLE]),
        # values beyond int64 (and beyond what the value feeds: numpy's seeds, int32 labels)
        Case("cli-sample-seed-beyond-int64", sample("--seed", 2**70), CLI, ["--seed", "2**63 - 1"]),
        Case("cli-evaluate-seed-beyond-int64", evaluate("--seed", 2**63, model="uncond_path"), CLI,
             ["--seed", "2**63 - 1"]),
        Case("cli-train-seed-beyond-numpy", lambda e: cli_run("train", "--output-dir", e.path("r-seed"), "--seed",
                                                              2**32, *TINY_TRAIN), CLI, ["--seed", "2**32 - 1"]),
        Case("cli-train-seed-negative", lambda e: cli_run("train", "--output-dir", e.path("r-seed"), "--seed", -1,
                                                          *TINY_TRAIN), CLI, ["--seed"]),
        Case("cli-sample-label-beyond-int32", sample("--num-images", 1, "--label", 2**40), CLI, ["--label"]),
        Case("cli-sample-labels-beyond-int32", sample("--labels", f"0,{2**40}"), CLI, ["--labels"]),
        Case("cli-train-image-size-beyond-int64", lambda e: cli_run("train", "--output-dir", e.path("r-size"),
                                                                    *TINY_TRAIN, "--image-size", 2**70), CLI,
             ["--image-size"]),
        Case("cli-train-timesteps-beyond-int64", lambda e: cli_run("train", "--output-dir", e.path("r-T"),
                                                                   *TINY_TRAIN, "--num-timesteps", 2**70), CLI,
             ["--num-timesteps"]),
        Case("cli-evaluate-batch-beyond-int64", evaluate("--batch-size", 2**70, model="uncond_path"), CLI,
             ["--batch-size"]),
        Case("cli-export-version-beyond-int64", lambda e: cli_run("export", "--model", e.model_path, "--output",
                                                                  e.path("served"), "--version", 2**63), CLI,
             ["--version"]),
        # empty paths and names (an unset shell variable): the current directory, the default split
        Case("cli-export-output-empty", lambda e: cli_run("export", "--model", e.model_path, "--output", "",
                                                          "--samplers", "ddim"), CLI, ["--output", "expected a path"]),
        Case("cli-evaluate-dataset-empty", lambda e: cli_run("evaluate", "--model", e.uncond_path, "--dataset", ""),
             CLI, ["--dataset", "expected a path"]),
        Case("cli-evaluate-split-empty", evaluate("--split", "", "--num-batches", 1, model="uncond_path"), CLI,
             ["--split", "expected a path or a name"]),
        # late refusals: the sample grid of a run, a run of days
        Case("cli-train-num-samples-too-many", lambda e: cli_run("train", "--output-dir", e.path("r-grid"),
                                                                 *TINY_TRAIN, "--num-samples", 10**9), CLI,
             ["--num-samples"]),
        # (on the code before the fix this row samples for about an hour instead of failing)
        Case("cli-sample-long-run", sample("--num-images", 2 * 10**6, "--steps", T), CLI,
             ["--num-images", "--allow-long-run"]),
    ]


def _tfds_run(env, path):
    """A killed run (checkpoint, no summary) recorded as trained on the TFDS data set "watched/images",
    a name that is a folder in the current directory (the rows run in `env.root`)."""
    os.makedirs(os.path.join(path, "checkpoints"))
    _copy(env.model_path, os.path.join(path, "checkpoints", "ckpt.keras"))
    settings = dict(preset="shapes", dataset=os.path.relpath(env.images_dir), dataset_kind="tfds", data_dir=None,
                    image_size=8, batch_size=2, learning_rate=0.002, num_timesteps=T, steps=2, seed=0,
                    sampler="ddpm", sample_steps=1, num_samples=1, guidance_scale=3.0, steps_per_epoch=2,
                    sample_every=0)
    with open(os.path.join(path, "checkpoints", "run.json"), "w") as file:
        json.dump(settings, file)


def _copy(path, target):
    """A copy of `path` under another name (a file a refused write must leave alone)."""
    with open(path, "rb") as source, open(target, "wb") as copy:
        copy.write(source.read())
    return target


CASES = _api_cases() + _cli_cases()


def outcome(case, env):
    """GOOD, WEAK or BAD for one row, and what happened."""
    before = env.snapshot()
    try:
        result = case.call(env)
    except Exception as error:  # What the row is for: which exception, which message.
        after = env.snapshot()
        if after != before:
            return "BAD", f"{type(error).__name__}, but files changed: {_changes(before, after)}"
        message = " ".join(str(error).split())
        if isinstance(error, case.error) and all(name in message for name in case.names):
            return "GOOD", message
        return "WEAK", f"{type(error).__name__}: {message[:300]}"
    after = env.snapshot()
    if case.error == CLI:
        code, stderr = result
        lines = [line for line in stderr.splitlines() if line.startswith("tfdiffusion: error: ")]
        if after != before:
            return "BAD", f"exit {code}, files changed: {_changes(before, after)}"
        if code == 2 and len(lines) == 1 and "Traceback" not in stderr and all(n in lines[0] for n in case.names):
            return "GOOD", lines[0]
        if code not in (0, None):
            return "WEAK", f"exit {code}: {stderr[-300:]}"
        return "BAD", f"exit {code}: accepted"
    return "BAD", f"accepted: returned {type(result).__name__}"


def _changes(before, after):
    return sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})[:5]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    cwd = os.getcwd()
    os.chdir(os.path.join(root))  # relative outputs of CLI rows land here, outside the watched folder
    try:
        yield Env(str(root))
    finally:
        os.chdir(cwd)


def test_the_table_is_large_enough():
    assert len(CASES) >= 80 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_clearly_before_any_work(env, case):
    verdict, detail = outcome(case, env)
    assert verdict == "GOOD", detail


if __name__ == "__main__":
    import tempfile
    from collections import Counter

    with tempfile.TemporaryDirectory() as root:
        os.chdir(root)
        environment = Env(root)
        counts = Counter()
        for row in CASES:
            verdict, detail = outcome(row, environment)
            counts[verdict] += 1
            if verdict != "GOOD":
                print(f"{verdict:4s} {row.id}: {detail}")
        print(json.dumps(dict(counts)))

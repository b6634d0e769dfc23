"""Named configurations: network, diffusion, data and training settings that go together."""

import dataclasses

import keras

from tfdiffusion import schedules
from tfdiffusion import validation
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.model import DiffusionModel
from tfdiffusion.nn import UNet
from tfdiffusion.optimizers import FusedAdamW

__all__ = ["Preset", "PRESETS", "get_preset", "build_model", "make_optimizer", "LinearWarmup"]


@dataclasses.dataclass(frozen=True)
class Preset:
    """A configuration that trains a model end to end.

    Attributes:
        name: the preset's name.
        description: one line for `--help`.
        dataset: "shapes" (built in) or a TFDS name.
        image_size: training resolution (pixels, square).
        channels: image channels.
        unet: `UNet` keyword arguments besides image size, channels and classes.
        schedule: beta schedule name; `num_timesteps` its T.
        model_mean_type, model_var_type, loss_type, min_snr_gamma:
            `GaussianDiffusion` options.
        conditional: train a class-conditional model when the data has labels.
        batch_size, learning_rate, train_steps, ema_decay, label_dropout,
        warmup_steps: training settings (warmup: linear learning-rate ramp).
        decay_to_zero: decay the learning rate linearly to 0 at `train_steps`.
        sampler: default sampler of the sample grid, "ddim" or "ddpm".
        sample_steps: its default number of steps.
        guidance_scale: default classifier-free guidance of a conditional model's samples.
    """

    name: str
    description: str
    dataset: str
    image_size: int
    channels: int
    unet: dict
    schedule: str = "cosine"
    num_timesteps: int = 1000
    model_mean_type: str = "epsilon"
    model_var_type: str = "fixed_small"
    loss_type: str = "mse"
    min_snr_gamma: float | None = None
    conditional: bool = True
    batch_size: int = 64
    learning_rate: float = 2e-4
    train_steps: int = 10000
    warmup_steps: int = 0
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    sampler: str = "ddim"
    sample_steps: int = 50
    guidance_scale: float = 1.0
    decay_to_zero: bool = False


_SHAPES = Preset(
    name="shapes",
    description="Built-in shapes, 16x16, class-conditional; minutes on a laptop CPU (the README's run).",
    dataset="shapes", image_size=16, channels=3,
    unet=dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
              attention_resolutions=(4,), dropout=0.0, num_groups=8, use_scale_shift_norm=True),
    min_snr_gamma=5.0,
    batch_size=32, learning_rate=2e-3, train_steps=2500, warmup_steps=100,
    ema_decay=0.995, sampler="ddpm", sample_steps=100, guidance_scale=3.0)

PRESETS = {
    preset.name: preset
    for preset in [
        _SHAPES,
        dataclasses.replace(
            _SHAPES, name="shapes-hybrid",
            description="As 'shapes' with learned variances and Improved DDPM's hybrid loss, "
                        "unweighted (no Min-SNR): for the likelihood.",
            model_var_type="learned_range", loss_type="hybrid", min_snr_gamma=None),
        Preset(
            name="mnist-small",
            description="MNIST 28x28x1, channels (32, 64, 128), attention at 7x7.",
            dataset="mnist", image_size=28, channels=1,
            unet=dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2,
                      attention_resolutions=(7,), dropout=0.1, num_groups=8),
            batch_size=64, learning_rate=2e-4, train_steps=20000, warmup_steps=500),
        Preset(
            name="ddpm-cifar10",
            description="DDPM's CIFAR-10 model (35.7M parameters), linear schedule, unconditional.",
            dataset="cifar10", image_size=32, channels=3,
            unet=dict(base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16,), dropout=0.1, num_groups=32),
            schedule="linear", conditional=False, batch_size=128, learning_rate=2e-4,
            train_steps=800000, warmup_steps=5000),
        Preset(
            name="improved-cifar10",
            description="Improved DDPM on CIFAR-10: cosine schedule, learned variances, hybrid loss.",
            dataset="cifar10", image_size=32, channels=3,
            unet=dict(base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
                      attention_resolutions=(16, 8), dropout=0.3, num_heads=4, num_groups=32),
            model_var_type="learned_range", loss_type="hybrid", conditional=False,
            batch_size=128, learning_rate=1e-4, train_steps=500000),
    ]
}


def get_preset(name):
    """Returns the `Preset` called `name`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Known presets: {sorted(PRESETS)}")
    return PRESETS[name]


def build_model(preset, num_classes=None, image_size=None, channels=None, seed=0, **overrides):
    """Builds an uncompiled `DiffusionModel` for a preset.

    Args:
        preset: a `Preset` or its name.
        num_classes: classes of a conditional model (None: unconditional;
            an unconditional preset ignores it).
        image_size, channels: override the preset's image shape (None: the preset's).
        seed: base seed of the training noise and timesteps.
        **overrides: `Preset` fields to replace (e.g. `num_timesteps=100`).

    Returns:
        A `DiffusionModel` with a built `UNet`.
    """
    seed = validation.check_seed("seed", seed)
    image_size = None if image_size is None else validation.check_int("image_size", image_size)
    channels = None if channels is None else validation.check_int("channels", channels)
    preset = get_preset(preset) if isinstance(preset, str) else preset
    preset = dataclasses.replace(preset, **overrides)
    unet = UNet(
        image_size=preset.image_size if image_size is None else image_size,
        in_channels=preset.channels if channels is None else channels,
        num_classes=num_classes if preset.conditional else None,
        learn_sigma=preset.model_var_type == "learned_range",
        **preset.unet,
    )
    diffusion = GaussianDiffusion(
        schedules.get_beta_schedule(preset.schedule, preset.num_timesteps),
        model_mean_type=preset.model_mean_type,
        model_var_type=preset.model_var_type,
        loss_type=preset.loss_type,
        min_snr_gamma=preset.min_snr_gamma,
    )
    return DiffusionModel(unet, diffusion, ema_decay=preset.ema_decay,
                          label_dropout=preset.label_dropout if unet.num_classes else 0.0, seed=seed)


def make_optimizer(preset):
    """AdamW at the preset's learning rate: a linear warm-up of `warmup_steps`,
    then, with `decay_to_zero`, a linear decay to 0 at `train_steps`.

    `FusedAdamW` (Keras' AdamW arithmetic, one kernel per variable): traces
    and compiles several times faster than `keras.optimizers.AdamW`.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    learning_rate = preset.learning_rate
    if preset.warmup_steps or preset.decay_to_zero:
        learning_rate = LinearWarmup(preset.learning_rate, max(preset.warmup_steps, 1),
                                     decay_steps=preset.train_steps if preset.decay_to_zero else None)
    return FusedAdamW(learning_rate, weight_decay=0.0)


@keras.saving.register_keras_serializable(package="tfdiffusion")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then constant,
    or (with `decay_steps`) falling linearly to 0 at step `decay_steps`."""

    def __init__(self, learning_rate, warmup_steps, decay_steps=None):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = None if decay_steps is None else int(decay_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        fraction = keras.ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        if self.decay_steps is not None:
            remaining = (self.decay_steps - step) / max(self.decay_steps - self.warmup_steps, 1)
            fraction = keras.ops.minimum(fraction, keras.ops.maximum(remaining, 0.0))
        return self.learning_rate * fraction

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps}

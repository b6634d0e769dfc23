"""`from_diffusers` and `convert_diffusers`: a diffusers pixel-space model folder as a `DiffusionModel`."""

import os
from typing import Optional

from tfdiffusion import files
from tfdiffusion.convert.diffusers_files import locate
from tfdiffusion.convert.diffusers_files import read_json
from tfdiffusion.convert.diffusers_files import read_weights
from tfdiffusion.convert.diffusers_scheduler import diffusion_from_scheduler_config
from tfdiffusion.convert.diffusers_scheduler import scheduler_sampling_defaults
from tfdiffusion.convert.diffusers_unet import DEFAULT_MAX_PARAMETERS
from tfdiffusion.convert.diffusers_unet import load_unet_weights
from tfdiffusion.convert.diffusers_unet import unet_from_config
from tfdiffusion.model import DiffusionModel
from tfdiffusion.validation import check_bool

__all__ = ["convert_diffusers", "from_diffusers"]


def from_diffusers(path: str, ema_decay: float = 0.9999, label_dropout: float = 0.0,
                   dropout: Optional[float] = None, loss_type: Optional[str] = None,
                   max_parameters: Optional[int] = DEFAULT_MAX_PARAMETERS) -> DiffusionModel:
    """Reads a diffusers `UNet2DModel` and its DDPM/DDIM scheduler as a `DiffusionModel`.

    No PyTorch is needed: the weights are read from
    `diffusion_pytorch_model.safetensors` as numpy. The UNet's outputs
    match diffusers' on the same inputs (images NHWC here, NCHW there), and
    the model fine-tunes with `model.fit` and saves as `.keras`.

    A class-conditional model (`num_class_embeds`) gets tfdiffusion's extra
    null-label row, initialised to zeros (the time embedding alone):
    diffusers has no null label, so the model never saw it, and
    `label_dropout` is 0 by default. Fine-tune with `label_dropout > 0` to
    teach it before using classifier-free guidance.

    Args:
        path: a diffusers model folder (a DDPM/DDIM pipeline folder with
            `unet/` and `scheduler/`, or the UNet and scheduler files at the
            top level), or, with `huggingface_hub` installed and online, a
            hub id such as "google/ddpm-cifar10-32".
        ema_decay: the `DiffusionModel`'s EMA decay for fine-tuning.
        label_dropout: the `DiffusionModel`'s label dropout (conditional
            models only).
        dropout: the UNet's dropout rate for fine-tuning; None takes the
            config's `dropout` (diffusers' default 0).
        loss_type: `GaussianDiffusion` loss; None: "hybrid" for learned
            variances, else "mse".
        max_parameters: refuse, before building anything, a config whose
            UNet would have more parameters (estimated from the config), or
            whose weights would not fit in the memory available (default
            1e9; None: no limit).

    Returns:
        `DiffusionModel` whose network and EMA network hold the diffusers
        weights.

    Raises:
        FileNotFoundError: a config or the weights file is missing.
        ValueError: a block type, key, value or tensor the converter does
            not understand, a tensor whose shape does not match the config
            or that holds NaN or infinite values, or a network above
            `max_parameters`, named in the message (config values under
            their config keys).
    """
    found = locate(path)
    unet_config = read_json(found.unet_config)
    scheduler_config = read_json(found.scheduler_config)
    diffusion = diffusion_from_scheduler_config(scheduler_config, loss_type=loss_type)
    overrides = {} if dropout is None else {"dropout": dropout}
    unet = unet_from_config(unet_config, max_parameters=max_parameters, **overrides)
    load_unet_weights(unet, read_weights(found.weights))
    if diffusion.learn_sigma != unet.learn_sigma:
        raise ValueError(
            f"The scheduler's variance_type ({scheduler_config.get('variance_type', 'fixed_small')!r}) "
            f"and the UNet's out_channels ({unet.out_channels}) disagree: learned_range needs twice "
            "in_channels outputs, fixed variances exactly in_channels.")
    defaults = scheduler_sampling_defaults(scheduler_config)
    return DiffusionModel(unet, diffusion, ema_decay=ema_decay,
                          label_dropout=label_dropout if unet.num_classes is not None else 0.0,
                          spacing=defaults["spacing"], clip_denoised=defaults["clip_denoised"])


def convert_diffusers(path: str, output: str, overwrite: bool = False, **kwargs) -> DiffusionModel:
    """Converts a diffusers model (see `from_diffusers`) into a `.keras` file.

    The file is written to a temporary name beside `output` and renamed,
    so an interrupted conversion leaves nothing half-written.

    Args:
        path: diffusers model folder or hub id.
        output: the `.keras` file to write.
        overwrite: replace an existing `output`.
        **kwargs: passed to `from_diffusers`.

    Returns:
        the converted `DiffusionModel`.

    Raises:
        FileExistsError: `output` exists and `overwrite` is False.
    """
    output = os.fspath(output)
    check_bool("overwrite", overwrite)
    if not output.endswith(".keras"):
        raise ValueError(f"`output` must be a .keras file. Received: output={output!r}")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output!r} exists; pass overwrite=True (--overwrite) to replace it.")
    model = from_diffusers(path, **kwargs)
    with files.atomic_output(output) as temporary:
        model.save(temporary)
    return model

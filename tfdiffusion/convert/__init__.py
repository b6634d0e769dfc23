"""Reading other libraries' checkpoints into tfdiffusion models: diffusers' pixel-space DDPM/DDIM models."""

from tfdiffusion.convert.diffusers import convert_diffusers
from tfdiffusion.convert.diffusers import from_diffusers
from tfdiffusion.convert.diffusers_scheduler import diffusion_from_scheduler_config
from tfdiffusion.convert.diffusers_scheduler import scheduler_betas
from tfdiffusion.convert.diffusers_scheduler import scheduler_sampling_defaults
from tfdiffusion.convert.diffusers_unet import load_unet_weights
from tfdiffusion.convert.diffusers_unet import unet_from_config

# Converter registry: source library -> function(path, **kwargs) -> DiffusionModel.
CONVERTERS = {"diffusers": from_diffusers}

__all__ = [
    "CONVERTERS",
    "convert_diffusers",
    "diffusion_from_scheduler_config",
    "from_diffusers",
    "load_unet_weights",
    "scheduler_betas",
    "scheduler_sampling_defaults",
    "unet_from_config",
]

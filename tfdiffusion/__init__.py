"""tfdiffusion: denoising diffusion models for TensorFlow and Keras."""

import os as _os
import sys as _sys

# Before TensorFlow is imported: oneDNN kernels on x86 and XLA's low-memory CPU
# scheduler, unless the environment says otherwise (see tfdiffusion.runtime_defaults).
from tfdiffusion.runtime_defaults import apply_runtime_defaults as _apply_runtime_defaults

_apply_runtime_defaults()

# The `tfdiffusion` command hides TensorFlow's native start-up chatter, which is
# printed while TensorFlow is imported (below): see `tfdiffusion.console`.
if _os.path.basename(getattr(_sys, "argv", [""])[0] or "") == "tfdiffusion" and "--debug" not in _sys.argv:
    from tfdiffusion.console import quiet_native_logs as _quiet_native_logs

    _quiet_native_logs()

from tfdiffusion.bounds import discretized_gaussian_log_likelihood
from tfdiffusion.bounds import normal_kl
from tfdiffusion.compilation_cache import enable_compilation_cache
from tfdiffusion.convert import convert_diffusers
from tfdiffusion.convert import from_diffusers
from tfdiffusion.data import ImageDataset
from tfdiffusion.data import load_dataset
from tfdiffusion.data import load_image_folder
from tfdiffusion.data import load_shapes
from tfdiffusion.data import load_tfds
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.export import export_onnx
from tfdiffusion.export import export_saved_model
from tfdiffusion.loading import load_model
from tfdiffusion.model import DiffusionModel
from tfdiffusion.nn import UNet
from tfdiffusion.optimizers import FusedAdamW
from tfdiffusion.presets import PRESETS
from tfdiffusion.presets import build_model
from tfdiffusion.presets import get_preset
from tfdiffusion.samplers import Sampler
from tfdiffusion.samplers import classifier_free_guidance
from tfdiffusion.samplers import get_sampler
from tfdiffusion.samplers import register_sampler
from tfdiffusion.samplers import sampler_names
from tfdiffusion.saved_model_check import UnsafeSavedModelError
from tfdiffusion.saved_model_check import check_saved_model_ops
from tfdiffusion.schedules import get_beta_schedule
from tfdiffusion.served_model import load_generator
from tfdiffusion.served_model import load_saved_model
from tfdiffusion.schedules import space_timesteps
from tfdiffusion.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from tfdiffusion.shapes import make_shapes
from tfdiffusion.training import TrainSettings
from tfdiffusion.training import train

__version__ = "0.1.0"

__all__ = [
    "DiffusionModel",
    "FusedAdamW",
    "GaussianDiffusion",
    "ImageDataset",
    "PRESETS",
    "SHAPES_CLASS_NAMES",
    "Sampler",
    "TrainSettings",
    "UNet",
    "UnsafeSavedModelError",
    "build_model",
    "check_saved_model_ops",
    "classifier_free_guidance",
    "convert_diffusers",
    "discretized_gaussian_log_likelihood",
    "enable_compilation_cache",
    "export_onnx",
    "export_saved_model",
    "from_diffusers",
    "get_beta_schedule",
    "get_preset",
    "get_sampler",
    "load_dataset",
    "load_generator",
    "load_image_folder",
    "load_model",
    "load_saved_model",
    "load_shapes",
    "load_tfds",
    "make_shapes",
    "normal_kl",
    "register_sampler",
    "sampler_names",
    "space_timesteps",
    "train",
]

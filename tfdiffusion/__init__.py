"""tfdiffusion: denoising diffusion models for TensorFlow and Keras."""

from tfdiffusion.bounds import discretized_gaussian_log_likelihood
from tfdiffusion.bounds import normal_kl
from tfdiffusion.convert import convert_diffusers
from tfdiffusion.convert import from_diffusers
from tfdiffusion.data import ImageDataset
from tfdiffusion.data import load_image_folder
from tfdiffusion.data import load_shapes
from tfdiffusion.data import load_tfds
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.model import DiffusionModel
from tfdiffusion.nn import UNet
from tfdiffusion.presets import PRESETS
from tfdiffusion.presets import build_model
from tfdiffusion.presets import get_preset
from tfdiffusion.samplers import classifier_free_guidance
from tfdiffusion.schedules import get_beta_schedule
from tfdiffusion.schedules import space_timesteps
from tfdiffusion.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from tfdiffusion.shapes import make_shapes

__version__ = "0.1.0"

__all__ = [
    "DiffusionModel",
    "GaussianDiffusion",
    "ImageDataset",
    "PRESETS",
    "SHAPES_CLASS_NAMES",
    "UNet",
    "build_model",
    "classifier_free_guidance",
    "convert_diffusers",
    "discretized_gaussian_log_likelihood",
    "from_diffusers",
    "get_beta_schedule",
    "get_preset",
    "load_image_folder",
    "load_shapes",
    "load_tfds",
    "make_shapes",
    "normal_kl",
    "space_timesteps",
]

"""Samplers: one module per family over `GaussianDiffusion`'s public prediction API, a registry, guidance.

Adding a sampler is one module with a `@register_sampler` class and one
import line below; `generate`, the CLI and the SavedModel export list
`sampler_names()`.
"""

from tfdiffusion.samplers.guidance import classifier_free_guidance
from tfdiffusion.samplers.levels import KARRAS
from tfdiffusion.samplers.levels import SOLVER_SPACINGS
from tfdiffusion.samplers.registry import Sampler
from tfdiffusion.samplers.registry import bounded_loop
from tfdiffusion.samplers.registry import get_sampler
from tfdiffusion.samplers.registry import register_sampler
from tfdiffusion.samplers.registry import sampler_names
from tfdiffusion.samplers.steps import StepSchedule
from tfdiffusion.samplers.steps import timestep_at
from tfdiffusion.samplers.thresholding import check_threshold
from tfdiffusion.samplers.thresholding import dynamic_threshold

# Each import registers its family, in this order.
from tfdiffusion.samplers.ddpm import DDPMSampler  # noqa: E402
from tfdiffusion.samplers.ddim import DDIMSampler  # noqa: E402
from tfdiffusion.samplers.dpm_solver import DPMSolverPP2M, DPMSolverPP3M, DPMSolverPP2MSDE  # noqa: E402
from tfdiffusion.samplers.edm import EulerSampler, HeunSampler, EulerAncestralSampler  # noqa: E402

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPP2M",
    "DPMSolverPP2MSDE",
    "DPMSolverPP3M",
    "EulerAncestralSampler",
    "EulerSampler",
    "HeunSampler",
    "KARRAS",
    "SOLVER_SPACINGS",
    "Sampler",
    "StepSchedule",
    "bounded_loop",
    "check_threshold",
    "classifier_free_guidance",
    "dynamic_threshold",
    "get_sampler",
    "register_sampler",
    "sampler_names",
    "timestep_at",
]

"""diffusers' DDPM/DDIM scheduler configs as tfdiffusion betas, `GaussianDiffusion` and sampling defaults."""

from typing import Any, Dict, Optional

import numpy as np

from tfdiffusion import schedules
from tfdiffusion.convert.diffusers_files import check_config_keys
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.validation import check_bool
from tfdiffusion.validation import check_choice
from tfdiffusion.validation import check_int
from tfdiffusion.validation import check_number

__all__ = [
    "MEAN_TYPES",
    "SCHEDULER_CLASSES",
    "VAR_TYPES",
    "diffusion_from_scheduler_config",
    "scheduler_betas",
    "scheduler_diffusion_kwargs",
    "scheduler_sampling_defaults",
]

SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
# diffusers' prediction_type / variance_type -> GaussianDiffusion's names.
MEAN_TYPES = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}
VAR_TYPES = {"fixed_small": "fixed_small", "fixed_large": "fixed_large",
             "learned_range": "learned_range"}

_HANDLED = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "prediction_type", "variance_type", "clip_sample", "rescale_betas_zero_snr",
            "timestep_spacing", "steps_offset")
# Accepted only with these values: tfdiffusion computes exactly this.
_DEFAULTS = {"thresholding": False, "clip_sample_range": 1.0, "set_alpha_to_one": True}
# Read by diffusers only when `thresholding` is on (refused above), or never
# (`tensor_format` of diffusers <= 0.2).
_INERT = ("dynamic_thresholding_ratio", "sample_max_value", "tensor_format")


def _where(config):
    return f"scheduler config ({config.get('_class_name', 'no _class_name')})"


def _check(config: Dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict (a parsed scheduler_config.json). "
                        f"Received: {type(config).__name__}")
    name = config.get("_class_name", "DDPMScheduler")
    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"scheduler config: _class_name={name!r} is not supported; expected one "
                         f"of {SCHEDULER_CLASSES}.")
    check_config_keys(config, _HANDLED, _DEFAULTS, _where(config), _INERT)
    if config.get("steps_offset", 0) != 0:
        raise ValueError(f"{_where(config)}: steps_offset={config['steps_offset']!r} is not "
                         "supported; only steps_offset=0 converts (tfdiffusion's samplers do "
                         "not shift their timesteps).")


def scheduler_betas(config: Dict[str, Any]) -> np.ndarray:
    """The betas `[T]` (float64) that a DDPM/DDIM scheduler config defines.

    Args:
        config: a parsed `scheduler_config.json` (DDPMScheduler or
            DDIMScheduler); absent keys take diffusers' defaults.

    Returns:
        float64 numpy array `[num_train_timesteps]`; with
        `rescale_betas_zero_snr` its last entry is 1.

    Raises:
        ValueError: for an unknown key or a value the converter cannot map,
            naming the key.
    """
    _check(config)
    where = _where(config)
    num = check_int(f"{where}: num_train_timesteps", config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    if trained is not None:
        if isinstance(trained, (str, bool)) or not isinstance(trained, (list, tuple)) or not all(
                isinstance(value, (int, float)) and not isinstance(value, bool) for value in trained):
            raise ValueError(f"{where}: trained_betas must be a list of numbers. Received: "
                             f"trained_betas={str(trained)[:200]}")
        betas = np.asarray(trained, dtype=np.float64)
        if betas.shape != (num,):
            raise ValueError(f"{where}: trained_betas must have num_train_timesteps={num} "
                             f"entries. Received shape {betas.shape}")
        outside = np.flatnonzero(~(np.isfinite(betas) & (betas > 0) & (betas <= 1)))
        if outside.size:
            raise ValueError(f"{where}: trained_betas must be finite numbers in (0, 1]. Received {outside.size} "
                             f"outside, e.g. trained_betas[{outside[0]}]={float(betas[outside[0]])!r}")
    else:
        schedule = check_choice(f"{where}: beta_schedule", config.get("beta_schedule", "linear"),
                                BETA_SCHEDULES)
        start = check_number(f"{where}: beta_start", config.get("beta_start", 0.0001), 0.0, 1.0)
        end = check_number(f"{where}: beta_end", config.get("beta_end", 0.02), 0.0, 1.0)
        if schedule == "linear":
            betas = schedules.linear_betas(num, start, end)
        elif schedule == "scaled_linear":
            betas = schedules.scaled_linear_betas(num, start, end)
        else:  # Glide's cosine, capped at 0.999: Improved DDPM's "cosine".
            betas = schedules.get_beta_schedule("cosine", num)
    if check_bool(f"{where}: rescale_betas_zero_snr", config.get("rescale_betas_zero_snr", False)):
        betas = schedules.rescale_zero_terminal_snr(betas)
    return betas


def scheduler_diffusion_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """`GaussianDiffusion` arguments (betas, model_mean_type, model_var_type) of a scheduler config.

    `prediction_type` epsilon / sample / v_prediction becomes `model_mean_type`
    "epsilon" / "x0" / "v"; `variance_type` fixed_small / fixed_large /
    learned_range becomes the `model_var_type` of the same name (diffusers'
    learned_range is Improved DDPM's). DDIMScheduler configs have no
    `variance_type`: "fixed_small".
    """
    betas = scheduler_betas(config)
    where = _where(config)
    prediction = check_choice(f"{where}: prediction_type", config.get("prediction_type", "epsilon"),
                              tuple(MEAN_TYPES))
    variance = check_choice(f"{where}: variance_type", config.get("variance_type", "fixed_small"),
                            tuple(VAR_TYPES))
    if betas[-1] == 1.0 and prediction == "epsilon":
        raise ValueError(f"{where}: rescale_betas_zero_snr=True needs prediction_type "
                         "'v_prediction' or 'sample': at zero terminal SNR a noise prediction "
                         "says nothing about x_0. Received: prediction_type='epsilon'")
    return dict(betas=betas, model_mean_type=MEAN_TYPES[prediction],
                model_var_type=VAR_TYPES[variance])


def diffusion_from_scheduler_config(config: Dict[str, Any],
                                    loss_type: Optional[str] = None) -> GaussianDiffusion:
    """A `GaussianDiffusion` with the schedule and parameterisation of a scheduler config.

    Args:
        config: a parsed `scheduler_config.json`.
        loss_type: the training loss; None picks "hybrid" for learned_range
            (Improved DDPM, which diffusers' learned-variance models follow)
            and "mse" otherwise. diffusers does not record the loss.

    Returns:
        `GaussianDiffusion`.
    """
    kwargs = scheduler_diffusion_kwargs(config)
    if loss_type is None:
        loss_type = "hybrid" if kwargs["model_var_type"] == "learned_range" else "mse"
    return GaussianDiffusion(loss_type=loss_type, **kwargs)


def scheduler_sampling_defaults(config: Dict[str, Any]) -> Dict[str, Any]:
    """How the scheduler samples by default, as plain values.

    Returns:
        dict with "spacing" ("leading" | "trailing" | "linspace", from
        `timestep_spacing`), "steps_offset" (always 0: other values are
        refused) and "clip_denoised" (`clip_sample`: clip predicted x_0 to
        [-1, 1]).
    """
    _check(config)
    where = _where(config)
    spacing = check_choice(f"{where}: timestep_spacing", config.get("timestep_spacing", "leading"),
                           SPACINGS)
    clip = check_bool(f"{where}: clip_sample", config.get("clip_sample", True))
    return {"spacing": spacing, "steps_offset": 0, "clip_denoised": clip}

"""DDPM/DDIM scheduler configs -> `GaussianDiffusion`: alphas_cumprod, one DDPM step and DDIM chains against diffusers."""

import numpy as np
import pytest

from tfdiffusion.convert import diffusion_from_scheduler_config
from tfdiffusion.convert import scheduler_betas
from tfdiffusion.convert import scheduler_sampling_defaults
from tfdiffusion.convert.diffusers_files import read_json

from .reference import ARRAYS
from .reference import INFO
from .reference import scheduler_config_path

SCHEDULES = ["linear", "linear_short", "scaled_linear", "squaredcos_cap_v2"]


def config(kind, name):
    return read_json(scheduler_config_path(kind, name))


def constant_model(output):
    """A model_fn returning the recorded model output whatever x_t and t are."""
    return lambda x_t, t: output


# diffusers builds its betas and their cumulative product in float32; ours
# are float64: over 1000 steps float32 rounding reaches ~1e-6 relative.
CUMPROD_TOL = dict(rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", SCHEDULES)
def test_alphas_cumprod_match_diffusers(name):
    diffusion = diffusion_from_scheduler_config(config("schedules", name))
    np.testing.assert_allclose(diffusion.alphas_cumprod,
                               ARRAYS[f"schedule/{name}/alphas_cumprod"], **CUMPROD_TOL)


def test_zero_snr_betas_match_diffusers():
    betas = scheduler_betas(config("schedules", "linear_zero_snr"))
    assert betas[-1] == 1.0
    np.testing.assert_allclose(np.cumprod(1.0 - betas),
                               ARRAYS["schedule/linear_zero_snr/alphas_cumprod"], **CUMPROD_TOL)


def test_zero_snr_diffusion_matches_diffusers():
    """Needs GaussianDiffusion to accept a final beta of 1 for v/x0 prediction (the lead's change)."""
    diffusion = diffusion_from_scheduler_config(config("schedules", "linear_zero_snr"))
    assert diffusion.model_mean_type == "v"
    np.testing.assert_allclose(diffusion.alphas_cumprod,
                               ARRAYS["schedule/linear_zero_snr/alphas_cumprod"], **CUMPROD_TOL)


@pytest.mark.parametrize("name", sorted(INFO["ddpm_steps"]))
def test_ddpm_step_matches_diffusers(name):
    """x_{t-1} = mean + exp(log_variance / 2) z with diffusers' own z, as tfdiffusion's DDPM sampler steps."""
    scheduler = config("ddpm_steps", name)
    diffusion = diffusion_from_scheduler_config(scheduler)
    defaults = scheduler_sampling_defaults(scheduler)
    prefix, t = f"ddpm_step/{name}", INFO["ddpm_steps"][name]["t"]
    x_t = ARRAYS[f"{prefix}/x_t"]
    out = diffusion.p_mean_variance(constant_model(ARRAYS[f"{prefix}/model_output"]), x_t,
                                    np.full([2], t, np.int32), defaults["clip_denoised"])
    prev = np.asarray(out["mean"] + np.exp(0.5 * out["log_variance"]) * ARRAYS[f"{prefix}/noise"])
    np.testing.assert_allclose(prev, ARRAYS[f"{prefix}/prev"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(INFO["ddim_chains"]))
def test_ddim_chain_matches_diffusers(name):
    """tfdiffusion's DDIM sampler over diffusers' timesteps, eta=0 (use_clipped_model_output there)."""
    scheduler = config("ddim_chains", name)
    diffusion = diffusion_from_scheduler_config(scheduler)
    defaults = scheduler_sampling_defaults(scheduler)
    prefix = f"ddim_chain/{name}"
    x_T = ARRAYS[f"{prefix}/x_T"]
    x_0 = diffusion.ddim_sample_loop(
        constant_model(ARRAYS[f"{prefix}/model_output"]), x_T.shape,
        num_steps=INFO["ddim_chains"][name]["num_steps"], noise=x_T,
        clip_denoised=defaults["clip_denoised"], spacing=defaults["spacing"])
    np.testing.assert_allclose(np.asarray(x_0), ARRAYS[f"{prefix}/x_0"], rtol=0, atol=1e-4)


def test_mean_and_variance_types_map_to_tfdiffusion_names():
    kinds = {name: diffusion_from_scheduler_config(config("ddpm_steps", name))
             for name in INFO["ddpm_steps"]}
    assert {(d.model_mean_type, d.model_var_type, d.loss_type) for d in kinds.values()} == {
        ("epsilon", "fixed_small", "mse"), ("v", "fixed_large", "mse"),
        ("x0", "learned_range", "hybrid")}


def test_sampling_defaults():
    assert scheduler_sampling_defaults(config("ddim_chains", "v_trailing")) == {
        "spacing": "trailing", "steps_offset": 0, "clip_denoised": False}
    assert scheduler_sampling_defaults({"_class_name": "DDPMScheduler"}) == {
        "spacing": "leading", "steps_offset": 0, "clip_denoised": True}
    assert scheduler_sampling_defaults({"timestep_spacing": "linspace"})["spacing"] == "linspace"


@pytest.mark.parametrize("changes, message", [
    (dict(steps_offset=1), "steps_offset=1"),
    (dict(clip_sample_range=2.0), "clip_sample_range=2.0"),
    (dict(thresholding=True), "thresholding=True"),
    (dict(set_alpha_to_one=False), "set_alpha_to_one=False"),
    (dict(beta_schedule="sigmoid"), "beta_schedule.*sigmoid"),
    (dict(variance_type="learned"), "variance_type.*learned"),
    (dict(prediction_type="flow"), "prediction_type.*flow"),
    (dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True needs prediction_type"),
    (dict(_class_name="PNDMScheduler"), "_class_name='PNDMScheduler'"),
    (dict(karras_sigmas=True), "unknown config key 'karras_sigmas'"),
    (dict(trained_betas=[0.1, 0.2]), "trained_betas"),
    # issue 23: the values themselves, under the key (not GaussianDiffusion's `betas`)
    (dict(num_train_timesteps=2, trained_betas=[0.1, float("nan")]),
     r"trained_betas must be finite numbers in \(0, 1\]. Received 1 outside, e.g. trained_betas\[1\]=nan"),
    (dict(num_train_timesteps=2, trained_betas=[0.1, 0.0]), r"trained_betas\[1\]=0.0"),
    (dict(num_train_timesteps=2, trained_betas="0.1,0.2"), "trained_betas must be a list of numbers"),
    (dict(num_train_timesteps=2, trained_betas=[True, 0.2]), "trained_betas must be a list of numbers"),
])
def test_config_errors_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        diffusion_from_scheduler_config({**config("schedules", "linear"), **changes})


def test_trained_betas_and_inert_keys():
    betas = np.linspace(0.001, 0.2, 10)
    diffusion = diffusion_from_scheduler_config(
        {"num_train_timesteps": 10, "trained_betas": betas.tolist(), "tensor_format": "pt",
         "sample_max_value": 3.0})
    np.testing.assert_allclose(diffusion.betas, betas, rtol=0, atol=0)

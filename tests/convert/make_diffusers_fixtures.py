"""Writes the diffusers reference fixture that `tests/convert` reads without torch.

Run it with torch and diffusers installed (the `convert-reference` extra),
from the repository root:

    python tests/convert/make_diffusers_fixtures.py [OUTPUT_DIR]

It builds small random-weight `UNet2DModel`s covering every option the
converter maps, saves each with `save_pretrained` (config.json and
diffusion_pytorch_model.safetensors, as published models are laid out),
and records diffusers' own outputs on fixed inputs; it saves scheduler
configs and records `alphas_cumprod`, one `DDPMScheduler.step` and a short
`DDIMScheduler` chain for each; and it saves the config of
google/ddpm-cifar10-32 with the parameter count diffusers gives it. Arrays
go to `reference.npz` (NHWC, float32), versions and counts to
`reference.json`. `test_fixture_regenerates_live` calls `build` to check
that the committed fixture is what diffusers produces today.
"""

import json
import os
import platform
import sys

import numpy as np

# Small configurations covering every UNet2DModel option the converter maps.
UNET_CONFIGS = {
    # google/ddpm-* layout: DDPM's sinusoid, TF-style downsample padding,
    # one-head attention at one resolution, eps 1e-6.
    "ddpm_layout": dict(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(4, 8, 8),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=2, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1,
        downsample_padding=0, attention_head_dim=None, act_fn="silu",
        center_input_sample=False, mid_block_scale_factor=1,
        time_embedding_type="positional", resnet_time_scale_shift="default",
    ),
    # Attention at two resolutions with several heads, scale-shift time
    # conditioning (its middle attention has no GroupNorm), an odd group
    # count (3), symmetric downsample padding and diffusers' defaults.
    "multi_attention_scale_shift": dict(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(6, 12, 12),
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=3, attention_head_dim=3,
        resnet_time_scale_shift="scale_shift",
    ),
    # Class labels, learned variances (twice the input channels), centred
    # input, a middle block without attention and a mid-block scale factor.
    "class_learned_sigma": dict(
        sample_size=8, in_channels=1, out_channels=2, layers_per_block=1,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=2, norm_eps=1e-6, attention_head_dim=4,
        num_class_embeds=5, center_input_sample=True,
        mid_block_scale_factor=2**0.5, add_attention=False, freq_shift=1,
    ),
    # Scale-shift conditioning with attention in the middle only, rescaled
    # by the middle block, 4 levels, heads of 8 channels.
    "deep_scale_shift": dict(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(4, 4, 8, 8),
        down_block_types=("DownBlock2D",) * 4, up_block_types=("UpBlock2D",) * 4,
        norm_num_groups=2, attention_head_dim=4, mid_block_scale_factor=1.5,
        resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False,
    ),
}

CIFAR10_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1,
    downsample_padding=0, attention_head_dim=None, act_fn="silu",
    center_input_sample=False, mid_block_scale_factor=1,
    time_embedding_type="positional", resnet_time_scale_shift="default",
)

# Scheduler configurations: every beta schedule, zero terminal SNR.
SCHEDULE_CONFIGS = {
    "linear": dict(beta_schedule="linear"),
    "linear_short": dict(beta_schedule="linear", num_train_timesteps=100,
                         beta_start=0.001, beta_end=0.05),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
    "linear_zero_snr": dict(beta_schedule="linear", rescale_betas_zero_snr=True,
                            prediction_type="v_prediction"),
}

# One DDPMScheduler.step each: (config, t). Not t near 0: diffusers computes
# 1 - alpha_bar_t in float32, which loses digits as alpha_bar_t nears 1.
DDPM_STEPS = {
    "epsilon_fixed_small": (dict(prediction_type="epsilon", variance_type="fixed_small",
                                 clip_sample=True), 500),
    "v_fixed_large": (dict(prediction_type="v_prediction", variance_type="fixed_large",
                           clip_sample=False, beta_schedule="squaredcos_cap_v2"), 100),
    "sample_learned_range": (dict(prediction_type="sample", variance_type="learned_range",
                                  clip_sample=True), 700),
}

# A DDIMScheduler chain each: (config, inference steps). diffusers' DDIM steps
# from t to t - T // steps, which is the next timestep of its own "trailing"
# list only when steps divides T (tfdiffusion always steps to the next one).
DDIM_CHAINS = {
    "epsilon_clip_leading": (dict(prediction_type="epsilon", clip_sample=True), 4),
    "v_trailing": (dict(prediction_type="v_prediction", clip_sample=False,
                        timestep_spacing="trailing", beta_schedule="scaled_linear",
                        beta_start=0.00085, beta_end=0.012), 4),
}

BATCH = 2
TIMESTEPS = np.array([3, 777], np.int64)
LABELS = np.array([1, 4], np.int64)


def _nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1).astype(np.float32)


def _nchw(array):
    import torch
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def _randomize(model, seed):
    """Perturbs every parameter, so GroupNorm affines and biases matter too."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def _unets(out_dir, arrays, info):
    import torch
    from diffusers import UNet2DModel
    for index, (name, config) in enumerate(UNET_CONFIGS.items()):
        torch.manual_seed(index)
        model = UNet2DModel(**config).eval()
        _randomize(model, seed=100 + index)
        model.save_pretrained(os.path.join(out_dir, name, "unet"), safe_serialization=True)
        rng = np.random.default_rng(index)
        size, channels = config["sample_size"], config["in_channels"]
        x = rng.standard_normal((BATCH, size, size, channels)).astype(np.float32)
        labels = torch.from_numpy(LABELS) if config.get("num_class_embeds") else None
        with torch.no_grad():
            out = model(_nchw(x), torch.from_numpy(TIMESTEPS), class_labels=labels).sample
        arrays[f"unet/{name}/x"] = x
        arrays[f"unet/{name}/out"] = _nhwc(out)
        info["unets"][name] = {"parameters": sum(p.numel() for p in model.parameters())}
    cifar = UNet2DModel(**CIFAR10_CONFIG)
    cifar.save_config(os.path.join(out_dir, "ddpm-cifar10-32", "unet"))
    info["ddpm_cifar10_32_parameters"] = sum(p.numel() for p in cifar.parameters())


def _schedulers(out_dir, arrays, info):
    import torch
    from diffusers import DDIMScheduler
    from diffusers import DDPMScheduler
    rng = np.random.default_rng(1234)
    shape = (BATCH, 8, 8, 3)
    for name, config in SCHEDULE_CONFIGS.items():
        scheduler = DDPMScheduler(**config)
        scheduler.save_config(os.path.join(out_dir, "schedules", name))
        arrays[f"schedule/{name}/alphas_cumprod"] = scheduler.alphas_cumprod.numpy()
    for index, (name, (config, t)) in enumerate(DDPM_STEPS.items()):
        scheduler = DDPMScheduler(**config)
        scheduler.save_config(os.path.join(out_dir, "ddpm_steps", name))
        channels = 6 if config["variance_type"] == "learned_range" else 3
        x_t = rng.standard_normal(shape).astype(np.float32)
        output = rng.standard_normal(shape[:3] + (channels,)).astype(np.float32)
        if channels == 6:  # variance interpolation values lie in [-1, 1]
            output[..., 3:] = np.tanh(output[..., 3:])
        prev = scheduler.step(_nchw(output), t, _nchw(x_t),
                              generator=torch.Generator().manual_seed(index)).prev_sample
        noise = torch.randn((BATCH, 3, 8, 8), generator=torch.Generator().manual_seed(index))
        arrays.update({f"ddpm_step/{name}/x_t": x_t, f"ddpm_step/{name}/model_output": output,
                       f"ddpm_step/{name}/noise": _nhwc(noise), f"ddpm_step/{name}/prev": _nhwc(prev)})
        info["ddpm_steps"][name] = {"t": t}
    for name, (config, steps) in DDIM_CHAINS.items():
        scheduler = DDIMScheduler(**config)
        scheduler.save_config(os.path.join(out_dir, "ddim_chains", name))
        scheduler.set_timesteps(steps)
        x_T = rng.standard_normal(shape).astype(np.float32)
        output = rng.standard_normal(shape).astype(np.float32)
        x = _nchw(x_T)
        for t in scheduler.timesteps:  # a constant model output at every step
            x = scheduler.step(_nchw(output), t, x, eta=0.0,
                               use_clipped_model_output=True).prev_sample
        arrays.update({f"ddim_chain/{name}/x_T": x_T, f"ddim_chain/{name}/model_output": output,
                       f"ddim_chain/{name}/x_0": _nhwc(x)})
        info["ddim_chains"][name] = {"num_steps": steps,
                                     "timesteps": scheduler.timesteps.tolist()}


def build(out_dir):
    """Writes the whole fixture into `out_dir`; returns its `reference.json` dict."""
    import diffusers
    import safetensors
    import torch
    arrays = {}
    info = {
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "timesteps": TIMESTEPS.tolist(), "labels": LABELS.tolist(),
        "unets": {}, "ddpm_steps": {}, "ddim_chains": {},
    }
    torch.set_num_threads(1)
    _unets(out_dir, arrays, info)
    _schedulers(out_dir, arrays, info)
    np.savez_compressed(os.path.join(out_dir, "reference.npz"), **arrays)
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    return info


if __name__ == "__main__":
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    target = sys.argv[1] if len(sys.argv) > 1 else default
    os.makedirs(target, exist_ok=True)
    print(json.dumps(build(target), indent=2))

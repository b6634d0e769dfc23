"""Shared pieces of the export and serving tests: a tiny model, one export per test session, fresh processes."""

import json
import os
import subprocess
import sys

import numpy as np

from tfdiffusion import export
from tfdiffusion import presets

# 8x8 images, T = 20, 8 base channels: traced and saved in seconds.
TINY_UNET = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                 dropout=0.0, num_groups=4, use_scale_shift_norm=True)
NUM_CLASSES = 3
T = 20
MAX_IMAGES = 4
# The shared export's samplers: the two classic ones and one of each solver kind (multistep DPM-Solver++,
# Heun with its 2 evaluations per step and churn); exporting all 8 would add ~12 s to every session.
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "heun")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Requests answered both by `DiffusionModel.generate` and by the exported signatures.
REQUESTS = {
    "ddim_guided_eta": dict(sampler="ddim", num_steps=5, seed=7, labels=[0, 1, 2], guidance_scale=2.0, eta=0.3),
    "ddim_plain": dict(sampler="ddim", num_steps=3, seed=-12, labels=[2], guidance_scale=1.0, eta=0.0),
    "ddpm_full_batch": dict(sampler="ddpm", num_steps=T, seed=2**40, labels=[1, 1, 0, 2], guidance_scale=3.0),
    # The solvers: a multistep one (its history through the served loop) and a stochastic one with an option.
    "dpmpp_2m_guided": dict(sampler="dpmpp_2m", num_steps=6, seed=11, labels=[2, 0, 1], guidance_scale=2.0),
    "heun_churn": dict(sampler="heun", num_steps=4, seed=5, labels=[1, 2], guidance_scale=1.5,
                       options={"churn": 4.0}),
}


def tiny_model(num_classes=NUM_CLASSES, seed=0):
    """A tiny `DiffusionModel` whose EMA weights are random (the UNet's output layer starts at zero,
    which would make every image independent of the weights)."""
    model = presets.build_model("shapes", num_classes=num_classes, image_size=8, num_timesteps=T,
                                unet=TINY_UNET, seed=seed)
    rng = np.random.default_rng(seed)
    for weight in model.ema_network.weights:
        value = np.asarray(weight.numpy())
        weight.assign(value + 0.1 * rng.standard_normal(value.shape).astype(value.dtype))
    return model


def assert_same_images(actual, expected):
    """Served images equal `generate`'s up to float round-off: the same shape and dtype, every value within one
    uint8 level, and at most 1% of the values one level apart.

    The served graph computes what `generate` computes, but TensorFlow's CPU kernels (oneDNN, on by default on
    x86) do not promise bit-identical floats from one run to the next, and a value within round-off of a level
    boundary then rounds the other way. Seen: one value of 768 at 247 instead of 246 (`ddpm_full_batch`, 20 steps
    with guidance) in 3 of 6 runs that followed other tests, two of them with the suite in two processes; never
    in 8 repeated calls of either in one process on an idle machine. A wrong sampler, schedule, guidance, seed or
    weight moves most values by many levels.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.dtype, actual.shape,
                                                                               expected.dtype, expected.shape)
    difference = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    assert difference.max() <= 1, f"values differ by up to {difference.max()} levels"
    assert np.mean(difference > 0) <= 0.01, f"{np.count_nonzero(difference)} of {difference.size} values differ"


def signature_inputs(request):
    """The signature name and its input arrays for a `REQUESTS` entry."""
    inputs = {"seed": np.int64(request["seed"]), "num_steps": np.int32(request["num_steps"]),
              "labels": np.asarray(request["labels"], np.int32),
              "guidance_scale": np.float32(request["guidance_scale"])}
    if "eta" in request:
        inputs["eta"] = np.float32(request["eta"])
    for name, value in request.get("options", {}).items():
        inputs[name] = np.float32(value)
    return f"generate_{request['sampler']}", inputs


def generate(model, request, **kwargs):
    """`model.generate` for a `REQUESTS` entry (without XLA, as exported by default)."""
    request = dict(request)
    labels = request.pop("labels")
    return model.generate(len(labels), labels=labels, jit_compile=False, **request, **kwargs)


_SHARED = {}


def shared_export(tmp_path_factory):
    """One tiny conditional model exported once per test session: `(model, version_dir, references)`."""
    if "export" not in _SHARED:
        model = tiny_model()
        base = tmp_path_factory.mktemp("serving_base")
        version_dir = export.export_saved_model(model, os.path.join(base, "tiny"), max_images=MAX_IMAGES,
                                                samplers=SAMPLERS)
        references = {name: generate(model, request) for name, request in REQUESTS.items()}
        _SHARED["export"] = (model, version_dir, references)
    return _SHARED["export"]


def run_python(code, *args, timeout=300):
    """Runs `code` in a fresh Python process (from the repo root); returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def run_json(code, *args, timeout=300):
    """`run_python`, which must succeed and print one JSON object on its last stdout line."""
    result = run_python(code, *args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])

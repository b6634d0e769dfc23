"""A Sonnet module as `GaussianDiffusion`'s model_fn, trained in a custom tf.function loop."""

import importlib.util
import pathlib

import numpy as np
import sonnet as snt

import tfdiffusion as tfdiff

_EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sonnet_model_fn.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("sonnet_model_fn", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sonnet_module_trains_and_samples():
    example = _load_example()
    module, diffusion, losses = example.train(steps=150, batch_size=32, num_timesteps=50)
    assert isinstance(module, snt.Module)
    # An untrained denoiser's epsilon mse is ~1 (predicting 0) or more; training must cut it.
    assert np.mean(losses[:10]) > 0.5
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:10])
    samples = diffusion.ddim_sample_loop(module, [4, 8, 8, 3], num_steps=5, seed=0).numpy()
    assert samples.shape == (4, 8, 8, 3) and np.all(np.abs(samples) <= 1.0 + 1e-6)
    bound = diffusion.calc_bpd_loop(module, tfdiff.make_shapes(2, 8)[0] / 127.5 - 1, num_eval_steps=4)
    assert np.all(np.isfinite(bound["total_bpd"].numpy()))

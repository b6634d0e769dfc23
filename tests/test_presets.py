"""Presets build the models they describe; the warm-up schedule ramps linearly."""

import numpy as np
import pytest

from tfdiffusion import presets


def test_shapes_preset_builds_a_conditional_model():
    model = presets.build_model("shapes", num_classes=8, seed=3)
    assert model.num_classes == 8 and model.image_shape == (16, 16, 3)
    assert model.diffusion.num_timesteps == 1000 and model.diffusion.loss_type == "mse"
    assert model.seed == 3
    # Min-SNR-5 loss weighting and ADM's scale-shift conditioning.
    assert model.diffusion.min_snr_gamma == 5.0 and model.network.use_scale_shift_norm
    hybrid = presets.build_model("shapes-hybrid", num_classes=8)
    assert hybrid.diffusion.model_var_type == "learned_range"
    assert hybrid.diffusion.min_snr_gamma is None  # the likelihood preset: unweighted L_simple
    assert hybrid.network.compute_output_shape((None, 16, 16, 3))[-1] == 6


def test_unconditional_preset_ignores_classes():
    model = presets.build_model("mnist-small", num_classes=None, num_timesteps=50)
    assert model.num_classes is None and model.diffusion.num_timesteps == 50


def test_linear_warmup():
    schedule = presets.LinearWarmup(1e-3, 10)
    values = [float(schedule(step)) for step in (0, 4, 9, 100)]
    np.testing.assert_allclose(values, [1e-4, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    assert presets.LinearWarmup(**schedule.get_config()).warmup_steps == 10


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'huge'.*shapes"):
        presets.get_preset("huge")


def test_linear_warmup_then_decay_to_zero():
    schedule = presets.LinearWarmup(1e-3, 10, decay_steps=110)
    values = [float(schedule(step)) for step in (0, 9, 10, 60, 110, 200)]
    # Warm-up to 1e-3 at step 9, then linear decay reaching 0 at step 110.
    np.testing.assert_allclose(values, [1e-4, 1e-3, 1e-3, 0.5e-3, 0.0, 0.0], rtol=1e-6, atol=1e-12)
    assert presets.LinearWarmup(**schedule.get_config()).decay_steps == 110

"""Request limits of the exported signatures: refused in the graph with a message naming the input, before any work."""

import numpy as np
import pytest
import tensorflow as tf

from tests import export_helpers as helpers
from tfdiffusion import export

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return helpers.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


def _generate_inputs(**changes):
    inputs = dict(seed=tf.constant(1, tf.int64), num_steps=tf.constant(2), labels=tf.constant([0, 1]),
                  guidance_scale=tf.constant(1.0), eta=tf.constant(0.0))
    inputs.update(changes)
    return {k: v for k, v in inputs.items() if v is not None}


@pytest.mark.parametrize("changes, fragment", [
    (dict(labels=tf.constant([0] * 5)), r"number of `labels` \(one per image\) must be between 1 and max_images=4"),
    (dict(labels=tf.constant([], tf.int32)), "must be between 1 and max_images=4"),
    (dict(num_steps=tf.constant(0)), r"`num_steps` must be in \[1, 20\]"),
    (dict(num_steps=tf.constant(21)), r"`num_steps` must be in \[1, 20\]"),
    (dict(labels=tf.constant([0, 3])), r"`labels` must be in \[0, 3\).*largest:\] \[3\]"),
    (dict(labels=tf.constant([-1, 0])), r"`labels` must be in \[0, 3\).*smallest:\] \[-1\]"),
    # Declared shapes are not enforced by servers: EnsureShape ops check them at run time.
    (dict(labels=tf.constant([[0, 1]])), r"Shape of tensor labels \[1,2\] is not compatible with expected shape \[\?\]"),
    (dict(seed=tf.constant([1, 2], tf.int64)), r"Shape of tensor seed \[2\] is not compatible with expected shape \[\]"),
    (dict(eta=tf.constant([0.0, 0.0, 0.0])), r"Shape of tensor eta \[3\] is not compatible"),
    (dict(eta=tf.constant(-0.5)), "`eta` must be a finite number >= 0"),
    (dict(guidance_scale=tf.constant(np.inf, tf.float32)), "`guidance_scale` must be a finite number"),
])
def test_generate_refuses(loaded, changes, fragment):
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
        loaded.signatures["generate"](**_generate_inputs(**changes))


def test_solver_signature_refuses_too_few_steps(loaded):
    """DPM-Solver++(2M) needs 3 steps (min_steps) also when served."""
    inputs = _generate_inputs()
    del inputs["eta"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`num_steps` must be in \[3, 20\]"):
        loaded.signatures["generate_dpmpp_2m"](**inputs)


@pytest.mark.parametrize("changes, error", [
    (dict(labels=tf.constant([0, 1], tf.int64)), "expected to be a int32 tensor but is a int64"),
    (dict(seed=tf.constant(1, tf.int32)), "expected to be a int64 tensor but is a int32"),
])
def test_generate_refuses_wrong_dtypes(loaded, changes, error):
    with pytest.raises(tf.errors.InvalidArgumentError, match=error):
        loaded.signatures["generate"](**_generate_inputs(**changes))


def test_missing_labels_refused(loaded):
    with pytest.raises(TypeError, match="missing a required argument: 'labels'"):
        loaded.signatures["generate"](**_generate_inputs(labels=None))


def _denoise_inputs(**changes):
    inputs = dict(x_t=tf.zeros([2, 8, 8, 3]), t=tf.constant([0, 19]), labels=tf.constant([0, 3]))
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("changes, fragment", [
    (dict(x_t=tf.zeros([5, 8, 8, 3]), t=tf.zeros([5], tf.int32), labels=tf.zeros([5], tf.int32)),
     "The batch of `x_t` must be between 1 and max_images=4"),
    # A larger image would make the network allocate more: refused by the run-time shape check.
    (dict(x_t=tf.zeros([2, 64, 64, 3])), r"Shape of tensor x_t \[2,64,64,3\] is not compatible with expected shape \[\?,8,8,3\]"),
    (dict(t=tf.constant([0, 20])), r"`t` must be in \[0, 20\)"),
    (dict(t=tf.constant([0])), "`t` must have one timestep per image"),
    (dict(labels=tf.constant([0, 4])), r"`labels` must be in \[0, 3\) \(or 3, the null label\)"),
    (dict(x_t=tf.fill([2, 8, 8, 3], np.nan)), "`x_t` must be a finite number"),
])
def test_denoise_refuses(loaded, changes, fragment):
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
        loaded.signatures["denoise"](**_denoise_inputs(**changes))


def test_denoise_matches_the_network(exported, loaded):
    """x_0 and epsilon from the EMA network, the null label accepted (client-side guidance)."""
    model, _, _ = exported
    x_t = np.random.default_rng(0).standard_normal([2, 8, 8, 3]).astype(np.float32)
    t, labels = np.array([3, 17], np.int32), np.array([1, 3], np.int32)
    outputs = loaded.signatures["denoise"](x_t=tf.constant(x_t), t=tf.constant(t), labels=tf.constant(labels))
    eps = model.ema_network(x_t, t, y=labels, training=False).numpy()
    np.testing.assert_allclose(outputs["pred_eps"].numpy(), eps, atol=1e-5)
    np.testing.assert_allclose(outputs["model_output"].numpy(), eps, atol=1e-5)
    # x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), from the schedule in float64.
    abar = model.diffusion.alphas_cumprod[t][:, None, None, None]
    x0 = (x_t - np.sqrt(1.0 - abar) * eps) / np.sqrt(abar)
    np.testing.assert_allclose(outputs["pred_xstart"].numpy(), x0, rtol=1e-4, atol=1e-4)


def test_xla_export_checks_outside_the_compiled_part(exported, tmp_path):
    """With jit_compile, XLA drops Asserts inside its clusters: the limits must still hold.

    (The refused requests never reach the compiled function, so nothing is compiled here.)
    """
    model, _, _ = exported
    version_dir = export.export_saved_model(model, tmp_path / "xla", samplers=("ddim",), jit_compile=True,
                                            max_images=2, warmup_requests=False)
    generate = tf.saved_model.load(version_dir).signatures["generate"]
    for changes, fragment in [(dict(labels=tf.constant([0, 1, 2])), "max_images=2"),
                              (dict(num_steps=tf.constant(0)), "`num_steps` must be in"),
                              (dict(labels=tf.constant([5, 0])), "`labels` must be in")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
            generate(**_generate_inputs(**changes))

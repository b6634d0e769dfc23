"""One-line checks shared by the `tfdiffusion.nn` tests (config, save/load)."""

import json

import keras
import numpy as np


def _as_json(config):
    """Normalises a config (tuples vs lists) for comparison."""
    return json.dumps(config, sort_keys=True, default=str)


def perturb_weights(layer, seed=0, scale=0.1):
    """Adds `scale * N(0, 1)` noise to every weight of a built layer.

    Zero-initialised output convolutions make a fresh UNet output exactly 0;
    perturbing them makes output comparisons meaningful.
    """
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = weight.numpy()
        weight.assign(value + scale * rng.standard_normal(value.shape))


def check_config_round_trip(layer):
    """`from_config(get_config())` rebuilds a layer with the same config."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def check_save_load(model, inputs, tmp_path, atol=0.0):
    """Saves `model` as `.keras`, reloads it, and compares outputs.

    Args:
        model: A built `keras.Model` (subclassed or functional).
        inputs: Positional call arguments, or a dict of keyword arguments.
        tmp_path: Directory for the file.
        atol: Allowed absolute difference (0: identical outputs).

    Returns:
        The reloaded model.
    """
    path = str(tmp_path / f"{model.name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    call = (lambda m: m(**inputs)) if isinstance(inputs, dict) else (
        lambda m: m(*inputs)
    )
    expected = np.asarray(call(model))
    actual = np.asarray(call(loaded))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)
    assert type(loaded) is type(model)
    assert _as_json(loaded.get_config()) == _as_json(model.get_config())
    return loaded


def check_layer_save_load(layer, inputs, tmp_path):
    """Wraps `layer` in a functional model over `inputs` and save/loads it."""
    symbolic = [
        keras.Input(shape=x.shape[1:], batch_size=x.shape[0], dtype=x.dtype)
        for x in inputs
    ]
    model = keras.Model(symbolic, layer(*symbolic), name=f"{layer.name}_model")
    return check_save_load(model, [list(inputs)], tmp_path)

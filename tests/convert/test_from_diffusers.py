"""`from_diffusers` / `convert_diffusers`: folders, fine-tuning with `fit`, `.keras` round trip, errors."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import DiffusionModel
from tfdiffusion.convert import CONVERTERS
from tfdiffusion.convert import convert_diffusers
from tfdiffusion.convert import from_diffusers

from .reference import ARRAYS
from .reference import TIMESTEPS
from .reference import make_pipeline
from .test_diffusers_unet import PARITY_ATOL


def output(network, name):
    y = np.array([1, 4], np.int32) if network.num_classes is not None else None
    return np.asarray(network(ARRAYS[f"unet/{name}/x"], TIMESTEPS, y=y))


@pytest.mark.parametrize("top_level", [False, True])
def test_pipeline_folder_becomes_diffusion_model(tmp_path, top_level):
    model = from_diffusers(make_pipeline(tmp_path, "ddpm_layout", top_level=top_level))
    assert isinstance(model, DiffusionModel) and CONVERTERS["diffusers"] is from_diffusers
    assert model.diffusion.num_timesteps == 1000 and model.label_dropout == 0.0
    for network in (model.network, model.ema_network):
        assert np.abs(output(network, "ddpm_layout")
                      - ARRAYS["unet/ddpm_layout/out"]).max() <= PARITY_ATOL


def test_class_conditional_model_gets_a_zero_null_label(tmp_path):
    folder = make_pipeline(tmp_path, "class_learned_sigma",
                           ("ddpm_steps", "sample_learned_range"))
    model = from_diffusers(folder)
    unet = model.network
    assert unet.num_classes == 5 and unet.learn_sigma
    assert model.diffusion.model_var_type == "learned_range" and model.label_dropout == 0.0
    table = np.asarray(unet.label_embedding.embeddings)
    np.testing.assert_array_equal(table[5], 0.0)
    assert np.abs(table[:5]).max() > 0
    # Fixed variances with a learned-variance network disagree: refused.
    with pytest.raises(ValueError, match="variance_type"):
        from_diffusers(make_pipeline(tmp_path / "other", "class_learned_sigma"))


def test_fine_tune_save_and_reload(tmp_path):
    model = from_diffusers(make_pipeline(tmp_path, "multi_attention_scale_shift"))
    before = [np.array(w) for w in model.network.trainable_weights]
    # No XLA: compiling the train step would take most of the test time on CPU.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype("float32")
    history = model.fit(tf.data.Dataset.from_tensor_slices(images).batch(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = [np.array(w) for w in model.network.trainable_weights]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before))
    path = str(tmp_path / "tuned.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for network, reloaded in ((model.network, loaded.network),
                              (model.ema_network, loaded.ema_network)):
        np.testing.assert_array_equal(output(reloaded, "multi_attention_scale_shift"),
                                      output(network, "multi_attention_scale_shift"))


def test_convert_diffusers_writes_keras_file_atomically(tmp_path):
    folder = make_pipeline(tmp_path, "deep_scale_shift")
    target = tmp_path / "out" / "model.keras"
    target.parent.mkdir()
    convert_diffusers(folder, target)
    assert sorted(os.listdir(target.parent)) == ["model.keras"]  # no temporary left
    loaded = keras.models.load_model(target)
    assert np.abs(output(loaded.network, "deep_scale_shift")
                  - ARRAYS["unet/deep_scale_shift/out"]).max() <= PARITY_ATOL
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_diffusers(folder, target)
    convert_diffusers(folder, target, overwrite=True)
    with pytest.raises(ValueError, match="must be a .keras file"):
        convert_diffusers(folder, tmp_path / "model.h5")


def test_missing_files_are_named(tmp_path):
    folder = make_pipeline(tmp_path, "ddpm_layout")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors.*needs torch"):
        from_diffusers(folder)
    os.remove(folder / "scheduler" / "scheduler_config.json")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        from_diffusers(folder)
    with pytest.raises(FileNotFoundError, match="Expected a diffusers model folder"):
        from_diffusers(str(tmp_path / "nowhere" / "at_all"))


def test_corrupt_weights_file_is_named(tmp_path):
    folder = make_pipeline(tmp_path, "ddpm_layout")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="Cannot read .*diffusion_pytorch_model.safetensors"):
        from_diffusers(folder)


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(FileNotFoundError, match="install huggingface_hub"):
        from_diffusers("google/ddpm-cifar10-32")


def _replace_tensor(folder, key, change):
    """Rewrites the pipeline's weights with `change(tensors)` applied (a damaged checkpoint)."""
    from safetensors.numpy import load_file, save_file

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)
    return tensors[key]


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    """issue 23: one NaN in conv_in.bias converted silently, then sampled black images."""
    folder = make_pipeline(tmp_path, "ddpm_layout")

    def one_nan(tensors):
        tensors["conv_in.bias"][3] = np.nan

    size = _replace_tensor(folder, "conv_in.bias", one_nan).size
    with pytest.raises(ValueError, match=rf"Weight 'conv_in.bias' in .*diffusion_pytorch_model.safetensors' holds "
                                         rf"1 NaN or infinite value\(s\) of {size}"):
        from_diffusers(folder)


def test_float64_beyond_float32_is_refused(tmp_path):
    folder = make_pipeline(tmp_path / "wide", "ddpm_layout")

    def huge(tensors):
        tensors["conv_out.weight"] = tensors["conv_out.weight"].astype(np.float64)
        tensors["conv_out.weight"].flat[:2] = 1e300

    _replace_tensor(folder, "conv_out.weight", huge)
    with pytest.raises(ValueError, match=r"Weight 'conv_out.weight' .*\(as float32: float64 values beyond its range\) "
                                         r"holds 2 NaN or infinite"):
        from_diffusers(folder)


def test_load_unet_weights_refuses_non_finite_tensors():
    from tfdiffusion.convert import load_unet_weights, unet_from_config
    from tfdiffusion.convert.diffusers_files import read_json, read_weights

    from .reference import unet_dir

    unet = unet_from_config(read_json(unet_dir("ddpm_layout") / "config.json"))
    tensors = read_weights(unet_dir("ddpm_layout") / "diffusion_pytorch_model.safetensors")
    before = unet.conv_in.bias.numpy()
    tensors["time_embedding.linear_1.weight"] = np.full_like(tensors["time_embedding.linear_1.weight"], np.inf)
    with pytest.raises(ValueError, match=r"'time_embedding.linear_1.weight' holds \d+ NaN or infinite"):
        load_unet_weights(unet, tensors)
    np.testing.assert_array_equal(unet.conv_in.bias.numpy(), before)  # nothing assigned

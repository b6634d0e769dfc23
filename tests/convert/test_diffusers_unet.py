"""`UNet2DModel` -> `UNet`: outputs against diffusers' own (the committed fixture), parameter counts, errors."""

import inspect
import json
import resource

import numpy as np
import pytest

from tfdiffusion.convert import load_unet_weights
from tfdiffusion.convert import unet_from_config
from tfdiffusion.convert.diffusers_unet import unet_kwargs
from tfdiffusion.nn.unet_size import unet_parameter_count
from tfdiffusion.convert.diffusers_files import read_json
from tfdiffusion.convert.diffusers_files import read_weights

from .reference import ARRAYS
from .reference import FIXTURES
from .reference import INFO
from .reference import TIMESTEPS
from .reference import UNETS
from .reference import labels_for
from .reference import unet_dir

# diffusers runs the same float32 math in another order (NCHW, fused
# attention): measured differences are ~1e-6 on outputs of magnitude ~1.
PARITY_ATOL = 1e-4


def converted(name, tensors=None):
    unet = unet_from_config(read_json(unet_dir(name) / "config.json"))
    if tensors is None:
        tensors = read_weights(unet_dir(name) / "diffusion_pytorch_model.safetensors")
    load_unet_weights(unet, tensors)
    return unet


def max_error(unet, name):
    out = np.asarray(unet(ARRAYS[f"unet/{name}/x"], TIMESTEPS, y=labels_for(unet)))
    return np.abs(out - ARRAYS[f"unet/{name}/out"]).max()


@pytest.mark.parametrize("name", UNETS)
def test_output_matches_diffusers(name):
    unet = converted(name)
    assert max_error(unet, name) <= PARITY_ATOL
    # tfdiffusion's label table has one more row (the null label).
    extra = unet.label_embedding.output_dim if unet.num_classes is not None else 0
    assert unet.count_params() == INFO["unets"][name]["parameters"] + extra


def test_fixture_covers_every_option():
    kwargs = {name: unet_from_config(read_json(unet_dir(name) / "config.json")).get_config()
              for name in UNETS}
    seen = lambda key: {json.dumps(k[key]) for k in kwargs.values()}  # noqa: E731
    assert seen("flip_sin_to_cos") == {"true", "false"} and seen("freq_shift") == {"0", "1"}
    assert seen("downsample_padding") == {'"same"', '"symmetric"'}
    assert seen("use_scale_shift_norm") == {"true", "false"}
    assert seen("middle_attention") == {"true", "false"}
    assert seen("middle_attention_norm") == {"true", "false"}
    assert seen("center_input") == {"true", "false"} and seen("learn_sigma") == {"true", "false"}
    assert {len(k["attention_resolutions"]) for k in kwargs.values()} == {0, 1, 2}
    assert "3" in seen("num_groups") and "null" in seen("num_head_channels")
    assert len(seen("num_head_channels")) >= 3 and len(seen("middle_scale_factor")) >= 3
    assert "5" in seen("num_classes") and "1e-06" in seen("norm_eps")


def test_ddpm_cifar10_32_parameter_count():
    config = read_json(FIXTURES / "ddpm-cifar10-32" / "unet" / "config.json")
    unet = unet_from_config(config)
    assert unet.count_params() == INFO["ddpm_cifar10_32_parameters"] == 35_746_307 == _estimate(config)
    assert unet.attention_resolutions == (16,) and unet.num_head_channels is None


def test_old_attention_names_are_read():
    tensors = read_weights(unet_dir("ddpm_layout") / "diffusion_pytorch_model.safetensors")
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in tensors.items():
        for new, legacy in old.items():
            key = key.replace(f".{new}.", f".{legacy}.")
        renamed[key] = value
    assert any(".proj_attn." in key for key in renamed)
    assert max_error(converted("ddpm_layout", renamed), "ddpm_layout") <= PARITY_ATOL


def config_with(**changes):
    config = read_json(unet_dir("ddpm_layout") / "config.json")
    config.update(changes)
    return config


@pytest.mark.parametrize("changes, message", [
    (dict(down_block_types=["SkipDownBlock2D", "AttnDownBlock2D", "DownBlock2D"]),
     r"down_block_types\[0\]='SkipDownBlock2D'"),
    (dict(up_block_types=["UpBlock2D", "UpBlock2D", "UpBlock2D"]), r"up_block_types\[1\]"),
    (dict(time_embedding_type="fourier"), "time_embedding_type='fourier'"),
    (dict(class_embed_type="timestep"), "class_embed_type='timestep'"),
    (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift='spatial'"),
    (dict(downsample_type="resnet"), "downsample_type='resnet'"),
    (dict(act_fn="gelu"), "act_fn='gelu'"),
    (dict(out_channels=4), "out_channels=4"),
    (dict(block_out_channels=[4, 6, 8]), "block_out_channels"),
    (dict(cross_attention_dim=16), "unknown config key 'cross_attention_dim'"),
    (dict(_class_name="UNet2DConditionModel"), "_class_name='UNet2DConditionModel'"),
    (dict(attn_norm_num_groups=1), "attn_norm_num_groups=1"),
])
def test_config_errors_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        unet_from_config(config_with(**changes))


def test_weights_errors_name_the_tensor():
    tensors = read_weights(unet_dir("ddpm_layout") / "diffusion_pytorch_model.safetensors")
    unet = unet_from_config(config_with())
    with pytest.raises(ValueError, match="lacks 1 tensor.*conv_out.bias"):
        load_unet_weights(unet, {k: v for k, v in tensors.items() if k != "conv_out.bias"})
    with pytest.raises(ValueError, match="does not use.*extra.weight"):
        load_unet_weights(unet, {**tensors, "extra.weight": np.zeros(2, np.float32)})
    # A config whose shapes differ from the weights': 6 channels at the first level, not 4.
    wider = unet_from_config(config_with(block_out_channels=[6, 12, 12], norm_num_groups=2))
    with pytest.raises(ValueError, match=r"'conv_in.weight' has shape \(4, 3, 3, 3\).*\(6, 3, 3, 3\)"):
        load_unet_weights(wider, tensors)


# issue 23: config values are checked under the config's own keys, before anything is built.
@pytest.mark.parametrize("changes, error, message", [
    (dict(layers_per_block=0), ValueError, r"`UNet config: layers_per_block` must be an integer >= 1"),
    (dict(layers_per_block=1.5), TypeError, r"`UNet config: layers_per_block` must be an integer"),
    (dict(sample_size=0), ValueError, r"sample_size=0 is not supported; expected a positive integer"),
    (dict(sample_size=6), ValueError, r"sample_size=6 .*a multiple of 4.*block_out_channels has 3 entries"),
    (dict(block_out_channels=[0, 8, 8]), ValueError, r"`UNet config: block_out_channels` must be a non-empty"),
    (dict(block_out_channels="4,8,8"), ValueError, r"`UNet config: block_out_channels` must be"),
    (dict(block_out_channels=[]), ValueError, r"`UNet config: block_out_channels` must be a non-empty"),
    (dict(norm_num_groups=3), ValueError, r"norm_num_groups=3 .*a divisor of every block's channels.*"
                                          r"block_out_channels\[0\]=4"),
    (dict(attention_head_dim=3), ValueError, r"attention_head_dim=3 .*a divisor of the channels of every "
                                             r"attention block \(\[8\]"),
    (dict(in_channels=0), ValueError, r"`UNet config: in_channels` must be an integer >= 1"),
    (dict(num_class_embeds=0), ValueError, r"`UNet config: num_class_embeds` must be an integer >= 1"),
    (dict(dropout=1.0), ValueError, r"`UNet config: dropout` must be a finite number in \[0.0, 1.0\)"),
    (dict(norm_eps=float("nan")), ValueError, r"`UNet config: norm_eps`"),
    (dict(mid_block_scale_factor=0), ValueError, r"`UNet config: mid_block_scale_factor`"),
    (dict(freq_shift=2), ValueError, r"`UNet config: freq_shift` must be an integer in \[0, 1\]"),
    (dict(flip_sin_to_cos="false"), TypeError, r"`UNet config: flip_sin_to_cos` must be True or False"),
    (dict(add_attention=1), TypeError, r"`UNet config: add_attention` must be True or False"),
    (dict(down_block_types="DownBlock2D"), ValueError, r"down_block_types='DownBlock2D' is not supported; "
                                                       r"expected a list of block names"),
    (dict(downsample_padding=True), ValueError, r"downsample_padding=True"),
])
def test_config_values_are_named_by_their_config_keys(changes, error, message):
    with pytest.raises(error, match=message):
        unet_from_config(config_with(**changes))


def _estimate(config):
    kwargs = unet_kwargs(config)
    return unet_parameter_count(**{key: kwargs[key] for key in inspect.signature(unet_parameter_count).parameters})


_VARIANTS = [
    ("ddpm_layout", dict(out_channels=6, num_class_embeds=7)),  # learned variances, class embedding
    ("ddpm_layout", dict(add_attention=False, layers_per_block=1)),
    ("ddpm_layout", dict(down_block_types=["AttnDownBlock2D"] * 3, up_block_types=["AttnUpBlock2D"] * 3,
                         resnet_time_scale_shift="scale_shift", block_out_channels=[4, 4, 12], sample_size=16)),
]


@pytest.mark.parametrize("name, changes", [(name, {}) for name in UNETS] + _VARIANTS,
                         ids=UNETS + [f"ddpm_layout-variant-{i}" for i in range(len(_VARIANTS))])
def test_parameter_estimate_equals_the_built_networks_count(name, changes):
    config = read_json(unet_dir(name) / "config.json")
    config.update(changes)
    assert _estimate(config) == unet_from_config(config).count_params()


def test_a_network_too_large_to_build_is_refused_before_building():
    """block_out_channels=[100000]: 360 GB of weights per copy; refused from the estimate, nothing allocated."""
    config = config_with(block_out_channels=[100000], down_block_types=["DownBlock2D"], up_block_types=["UpBlock2D"],
                         norm_num_groups=2)
    estimate = _estimate(config)
    assert estimate > 10**11
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=rf"block_out_channels=\[100000\], layers_per_block=2 make a UNet of an "
                                         rf"estimated {estimate:,} parameters, .* GiB as float32 .*above "
                                         rf"`max_parameters`=1000000000.*a larger `max_parameters` converts "
                                         rf"it .*None: no limit"):
        unet_from_config(config)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 100 * 1024  # KiB: under 100 MB
    with pytest.raises(ValueError, match=r"num_class_embeds=100000000, block_out_channels"):
        unet_from_config(config_with(num_class_embeds=10**8))


def test_max_parameters_is_the_opt_out():
    config = config_with()
    count = _estimate(config)
    with pytest.raises(ValueError, match=rf"above `max_parameters`={count - 1}\b"):
        unet_from_config(config, max_parameters=count - 1)
    assert unet_from_config(config, max_parameters=count).count_params() == count
    assert unet_from_config(config, max_parameters=None).count_params() == count
    with pytest.raises(TypeError, match="max_parameters"):
        unet_from_config(config, max_parameters=1e9)

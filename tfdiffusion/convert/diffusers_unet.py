"""diffusers' `UNet2DModel` config and weights as a tfdiffusion `UNet`, layer by layer."""

import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tfdiffusion import validation
from tfdiffusion.convert.diffusers_files import check_config_keys
from tfdiffusion.convert.diffusers_files import check_finite_tensor
from tfdiffusion.nn import AttentionBlock
from tfdiffusion.nn import Downsample
from tfdiffusion.nn import ResBlock
from tfdiffusion.nn import UNet
from tfdiffusion.nn import Upsample
from tfdiffusion.nn.unet_size import unet_parameter_count
from tfdiffusion.sampling import available_memory_bytes

__all__ = ["DEFAULT_MAX_PARAMETERS", "load_unet_weights", "unet_from_config", "unet_kwargs", "weight_map"]

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
_HANDLED = ("sample_size", "in_channels", "out_channels", "center_input_sample", "freq_shift",
            "flip_sin_to_cos", "down_block_types", "up_block_types", "block_out_channels",
            "layers_per_block", "mid_block_scale_factor", "downsample_padding", "dropout",
            "act_fn", "attention_head_dim", "norm_num_groups", "attn_norm_num_groups", "norm_eps",
            "resnet_time_scale_shift", "add_attention", "num_class_embeds", "time_embedding_dim")
# Accepted only with diffusers' default value.
_DEFAULTS = {"time_embedding_type": "positional", "mid_block_type": "UNetMidBlock2D",
             "downsample_type": "conv", "upsample_type": "conv", "class_embed_type": None}
# Read by diffusers only for time_embedding_type="learned" (refused above).
_INERT = ("num_train_timesteps",)
_WHERE = "UNet config"


def _get(config, key, default):
    return config[key] if key in config else default


def _bad(key, value, expected):
    return ValueError(f"{_WHERE}: {key}={value!r} is not supported; expected {expected}.")


def _level_attention(down_types, up_types) -> List[bool]:
    levels = len(down_types)
    if len(up_types) != levels:
        raise _bad("up_block_types", list(up_types), f"{levels} entries, one per down block")
    attention = []
    for level, (down, up) in enumerate(zip(down_types, reversed(up_types))):
        if down not in DOWN_BLOCKS:
            raise _bad(f"down_block_types[{level}]", down, f"one of {DOWN_BLOCKS}")
        if up not in UP_BLOCKS:
            raise _bad(f"up_block_types[{levels - 1 - level}]", up, f"one of {UP_BLOCKS}")
        if (down == "AttnDownBlock2D") != (up == "AttnUpBlock2D"):
            raise _bad(f"up_block_types[{levels - 1 - level}]", up,
                       f"attention mirroring down_block_types[{level}]={down!r}")
        attention.append(down == "AttnDownBlock2D")
    return attention


def _key(key: str) -> str:
    """The name a config value is checked under: "UNet config: layers_per_block"."""
    return f"{_WHERE}: {key}"


def _block_types(config, key, default) -> Tuple[str, ...]:
    value = _get(config, key, default)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) for item in value):
        raise _bad(key, value, "a list of block names such as ['DownBlock2D', 'AttnDownBlock2D']")
    return tuple(value)


def _checked_values(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config's values that shape the network, each checked under its own key (diffusers' defaults
    for absent keys), and the checks across keys that the UNet would otherwise make under its names."""
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not validation.is_int(size) or size < 1:
        raise _bad("sample_size", config.get("sample_size"), "a positive integer (square images)")
    channels = _get(config, "block_out_channels", (224, 448, 672, 896))
    channels = validation.check_int_tuple(_key("block_out_channels"), channels, allow_empty=False)
    base = channels[0]
    if any(c % base for c in channels):
        raise _bad("block_out_channels", list(channels), f"multiples of the first entry ({base})")
    values = dict(
        sample_size=int(size), block_out_channels=channels,
        in_channels=validation.check_int(_key("in_channels"), _get(config, "in_channels", 3)),
        out_channels=validation.check_int(_key("out_channels"), _get(config, "out_channels", 3)),
        layers_per_block=validation.check_int(_key("layers_per_block"), _get(config, "layers_per_block", 2)),
        norm_num_groups=validation.check_int(_key("norm_num_groups"), _get(config, "norm_num_groups", 32)),
        attention_head_dim=validation.check_optional_int(_key("attention_head_dim"),
                                                         config.get("attention_head_dim", 8)),
        num_class_embeds=validation.check_optional_int(_key("num_class_embeds"), config.get("num_class_embeds")),
        freq_shift=validation.check_int(_key("freq_shift"), _get(config, "freq_shift", 0), 0, max(base // 2 - 1, 0)),
        norm_eps=validation.check_number(_key("norm_eps"), _get(config, "norm_eps", 1e-5), 0.0, min_inclusive=False),
        dropout=validation.check_number(_key("dropout"), _get(config, "dropout", 0.0), 0.0, 1.0,
                                        max_inclusive=False),
        mid_block_scale_factor=validation.check_number(_key("mid_block_scale_factor"),
                                                       _get(config, "mid_block_scale_factor", 1), 0.0,
                                                       min_inclusive=False),
        flip_sin_to_cos=validation.check_bool(_key("flip_sin_to_cos"), _get(config, "flip_sin_to_cos", True)),
        center_input_sample=validation.check_bool(_key("center_input_sample"),
                                                  _get(config, "center_input_sample", False)),
        add_attention=validation.check_bool(_key("add_attention"), _get(config, "add_attention", True)),
    )
    if values["out_channels"] not in (values["in_channels"], 2 * values["in_channels"]):
        raise _bad("out_channels", values["out_channels"],
                   f"in_channels ({values['in_channels']}) or twice it (learned variances)")
    undivided = [f"block_out_channels[{i}]={c}" for i, c in enumerate(channels) if c % values["norm_num_groups"]]
    if undivided:
        raise _bad("norm_num_groups", values["norm_num_groups"],
                   f"a divisor of every block's channels (not of {', '.join(undivided)})")
    factor = 2 ** (len(channels) - 1)
    if values["sample_size"] % factor:
        raise _bad("sample_size", values["sample_size"],
                   f"a multiple of {factor}, to be halved {len(channels) - 1} times "
                   f"(block_out_channels has {len(channels)} entries)")
    return values


def unet_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """`UNet` constructor arguments equivalent to a `UNet2DModel` config.

    Every value is checked under its config key (`layers_per_block`, not
    the UNet's `num_res_blocks`), before any network is built.

    Raises:
        ValueError, TypeError: for a block type, key or value the converter
            cannot map, naming it.
    """
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict (a parsed config.json). Received: "
                        f"{type(config).__name__}")
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise _bad("_class_name", name, "'UNet2DModel' (pixel-space DDPM/DDIM models)")
    check_config_keys(config, _HANDLED, _DEFAULTS, _WHERE, _INERT)
    values = _checked_values(config)
    size, channels = values["sample_size"], values["block_out_channels"]
    base = channels[0]
    down = _block_types(config, "down_block_types",
                        ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"))
    up = _block_types(config, "up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    if len(down) != len(channels):
        raise _bad("down_block_types", list(down), f"{len(channels)} entries (block_out_channels)")
    attention = _level_attention(down, up)
    head_dim = values["attention_head_dim"]
    attention_channels = [c for c, a in zip(channels, attention) if a] + (
        [channels[-1]] if values["add_attention"] else [])
    if head_dim is not None and any(c % head_dim for c in attention_channels):
        raise _bad("attention_head_dim", head_dim,
                   f"a divisor of the channels of every attention block ({sorted(set(attention_channels))}, "
                   "from block_out_channels)")
    if _get(config, "act_fn", "silu") not in ("silu", "swish"):
        raise _bad("act_fn", config["act_fn"], "'silu' (or its alias 'swish')")
    padding = _get(config, "downsample_padding", 1)
    if padding not in (0, 1) or isinstance(padding, bool):
        raise _bad("downsample_padding", padding, "0 (pad bottom/right) or 1 (pad every side)")
    shift = _get(config, "resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise _bad("resnet_time_scale_shift", shift, "'default' or 'scale_shift'")
    groups = values["norm_num_groups"]
    attn_groups = config.get("attn_norm_num_groups")
    if attn_groups is not None and attn_groups != groups:
        raise _bad("attn_norm_num_groups", attn_groups, f"None or norm_num_groups ({groups})")
    emb_dim = config.get("time_embedding_dim")
    if emb_dim is not None and emb_dim != 4 * base:
        raise _bad("time_embedding_dim", emb_dim, f"None or 4 * block_out_channels[0] ({4 * base})")
    return dict(
        image_size=size, in_channels=values["in_channels"], base_channels=base,
        channel_mult=tuple(c // base for c in channels),
        num_res_blocks=values["layers_per_block"],
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attention) if a),
        dropout=values["dropout"],
        num_classes=values["num_class_embeds"],
        learn_sigma=values["out_channels"] == 2 * values["in_channels"],
        num_heads=1, num_head_channels=head_dim,
        num_groups=groups, use_scale_shift_norm=shift == "scale_shift",
        flip_sin_to_cos=values["flip_sin_to_cos"],
        freq_shift=values["freq_shift"], norm_eps=values["norm_eps"],
        downsample_padding="same" if padding == 0 else "symmetric",
        middle_attention=values["add_attention"],
        # diffusers' middle attention has a GroupNorm only with "default"
        # time conditioning, unless attn_norm_num_groups asks for one.
        middle_attention_norm=shift == "default" or attn_groups is not None,
        middle_scale_factor=values["mid_block_scale_factor"],
        center_input=values["center_input_sample"],
    )


# The default limit of `unet_from_config` / `from_diffusers`: 1e9 parameters are 4 GB per float32 copy, and a
# conversion holds three (the tensors read, the network, its EMA copy). diffusers' largest pixel-space
# UNet2DModels (google/ddpm-*-256) have 114M.
DEFAULT_MAX_PARAMETERS = 10**9
# float32 copies of the weights that a conversion holds at once: the tensors read, the network, its EMA copy.
_COPIES = 3


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _check_size(config: Dict[str, Any], kwargs: Dict[str, Any], max_parameters: Optional[int]) -> int:
    """Refuses, before building, a network above `max_parameters` or the memory available; returns the estimate."""
    count = unet_parameter_count(**{key: kwargs[key] for key in (
        "image_size", "in_channels", "base_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
        "num_classes", "learn_sigma", "use_scale_shift_norm", "middle_attention", "middle_attention_norm")})
    if max_parameters is None:
        return count
    needed = _COPIES * 4 * count
    available = available_memory_bytes()
    too_many = count > max_parameters
    if too_many or (available is not None and needed > available):
        embedding = (kwargs["num_classes"] + 1) * 4 * kwargs["base_channels"] if kwargs["num_classes"] else 0
        keys = [f"block_out_channels={list(_get(config, 'block_out_channels', (224, 448, 672, 896)))}",
                f"layers_per_block={kwargs['num_res_blocks']}"]
        if embedding > count / 2:
            keys = [f"num_class_embeds={kwargs['num_classes']}"] + keys
        limit = (f"above `max_parameters`={max_parameters}" if too_many else
                 f"more than the {_gib(available)} of memory available")
        raise ValueError(f"{_WHERE}: {', '.join(keys)} make a UNet of an estimated {count:,} parameters, "
                         f"{_gib(needed)} as float32 (the weights read, the network and its EMA copy): {limit}. "
                         "Refused before building it; a larger `max_parameters` converts it if the model really "
                         "is that large (in Python, None: no limit).")
    return count


def unet_from_config(config: Dict[str, Any], max_parameters: Optional[int] = DEFAULT_MAX_PARAMETERS,
                     **overrides) -> UNet:
    """A built `UNet` with the architecture of a `UNet2DModel` config (fresh weights).

    Args:
        config: a parsed `config.json`.
        max_parameters: refuse, before building, a network of more
            parameters (estimated from the config by `unet_parameter_count`),
            or one whose weights (three float32 copies during a conversion)
            exceed the memory available; None: no limit.
        **overrides: `UNet` arguments replacing the mapped ones (e.g.
            `dropout` for fine-tuning).

    Raises:
        ValueError, TypeError: a config value the converter cannot map, or
            a network above the limits, naming the config key(s).
    """
    if max_parameters is not None:
        max_parameters = validation.check_int("max_parameters", max_parameters)
    kwargs = {**unet_kwargs(config), **overrides}
    _check_size(config, kwargs, max_parameters)
    try:
        unet = UNet(**kwargs)
    except (ValueError, TypeError) as error:  # a combination the checks above do not foresee
        raise type(error)(f"{_WHERE}: the config's values give a UNet that refuses them ({error}); the config "
                          "keys map to UNet arguments as sample_size -> image_size, layers_per_block -> "
                          "num_res_blocks, block_out_channels -> base_channels and channel_mult, norm_num_groups "
                          "-> num_groups, attention_head_dim -> num_head_channels") from None
    unet.build((None, unet.image_size, unet.image_size, unet.in_channels))
    return unet


def _layer_prefix(name: str, levels: int) -> str:
    """tfdiffusion layer name -> diffusers module path."""
    match = re.fullmatch(r"(down|up)_(\d+)_(res|attn|downsample|upsample)(?:_(\d+))?", name)
    if match:
        side, level, kind, index = match.groups()
        block = int(level) if side == "down" else levels - 1 - int(level)
        child = {"res": f"resnets.{index}", "attn": f"attentions.{index}",
                 "downsample": "downsamplers.0", "upsample": "upsamplers.0"}[kind]
        return f"{side}_blocks.{block}.{child}"
    return {"middle_res_0": "mid_block.resnets.0", "middle_attn": "mid_block.attentions.0",
            "middle_res_1": "mid_block.resnets.1"}[name]


def _conv(layer, prefix):
    return [(layer.kernel, f"{prefix}.weight", "conv"), (layer.bias, f"{prefix}.bias", "copy")]


def _dense(layer, prefix):
    return [(layer.kernel, f"{prefix}.weight", "linear"), (layer.bias, f"{prefix}.bias", "copy")]


def _norm(layer, prefix):
    return [(layer.gamma, f"{prefix}.weight", "copy"), (layer.beta, f"{prefix}.bias", "copy")]


def _block_entries(layer, prefix):
    if isinstance(layer, ResBlock):
        entries = (_norm(layer.norm_1, f"{prefix}.norm1") + _conv(layer.conv_1, f"{prefix}.conv1")
                   + _dense(layer.emb_proj, f"{prefix}.time_emb_proj")
                   + _norm(layer.norm_2, f"{prefix}.norm2") + _conv(layer.conv_2, f"{prefix}.conv2"))
        if layer.skip is not None:
            entries += _conv(layer.skip, f"{prefix}.conv_shortcut")
        return entries
    if isinstance(layer, AttentionBlock):
        entries = [] if layer.norm is None else _norm(layer.norm, f"{prefix}.group_norm")
        return entries + (_dense(layer.query, f"{prefix}.to_q") + _dense(layer.key, f"{prefix}.to_k")
                          + _dense(layer.value, f"{prefix}.to_v")
                          + _dense(layer.proj_out, f"{prefix}.to_out.0"))
    if isinstance(layer, (Downsample, Upsample)):
        return _conv(layer.conv, f"{prefix}.conv")
    raise TypeError(f"No diffusers counterpart for layer {layer.name!r} ({type(layer).__name__})")


def weight_map(unet: UNet) -> List[Tuple[Any, str, str]]:
    """Every weight of a built `UNet` with its diffusers key and layout change.

    Returns:
        list of `(variable, diffusers_key, transform)`; `transform` is "conv"
        (OIHW -> HWIO), "linear" ([out, in] -> [in, out]), "embedding" (rows
        plus tfdiffusion's null-label row) or "copy".
    """
    levels = len(unet.channel_mult)
    entries = (_conv(unet.conv_in, "conv_in")
               + _dense(unet.time_embedding.dense_1, "time_embedding.linear_1")
               + _dense(unet.time_embedding.dense_2, "time_embedding.linear_2"))
    if unet.label_embedding is not None:
        entries.append((unet.label_embedding.embeddings, "class_embedding.weight", "embedding"))
    for layer in unet.down_blocks + unet.middle_blocks + unet.up_blocks:
        entries += _block_entries(layer, _layer_prefix(layer.name, levels))
    return entries + _norm(unet.norm_out, "conv_norm_out") + _conv(unet.conv_out, "conv_out")


_LEGACY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_legacy(tensors):
    """Attention weights saved before diffusers 0.14 (query/key/value/proj_attn), renamed as diffusers does."""
    renamed = {}
    for key, value in tensors.items():
        match = _LEGACY.match(key)
        if match:
            prefix, old, kind = match.groups()
            key = f"{prefix}.{_LEGACY_NAMES[old]}.{kind}"
        if key in renamed:
            raise ValueError(f"Weight {key!r} appears twice (under its old and its new name)")
        renamed[key] = value
    return renamed


def _to_keras(value, transform, variable, key):
    """A diffusers tensor in the layout of `variable`; raises naming `key` on a shape mismatch."""
    expected = tuple(variable.shape)
    if transform == "conv":  # OIHW -> HWIO
        wanted = (expected[3], expected[2], expected[0], expected[1]) if len(expected) == 4 else None
    elif transform == "linear":  # [out, in] -> [in, out]
        wanted = expected[::-1]
    elif transform == "embedding":  # tfdiffusion has one more row: the null label
        wanted = (expected[0] - 1,) + expected[1:]
    else:
        wanted = expected
    if value.shape != wanted:
        raise ValueError(f"Weight {key!r} has shape {value.shape}, but the config implies "
                         f"{wanted} (diffusers' layout).")
    if transform == "conv":
        return value.transpose(2, 3, 1, 0)
    if transform == "linear":
        return value.T
    if transform == "embedding":  # diffusers has no null label: its row starts at 0
        return np.concatenate([value, np.zeros((1,) + value.shape[1:], value.dtype)])
    return value


def load_unet_weights(unet: UNet, tensors: Dict[str, np.ndarray]) -> None:
    """Assigns diffusers `UNet2DModel` weights to a built `UNet` from `unet_from_config`.

    Every weight of `unet` must find its tensor, and every tensor must be
    used; the old attention names (query, key, value, proj_attn) are read
    as their new ones.

    Raises:
        ValueError: naming a missing, unused, mis-shaped or non-finite tensor.
    """
    tensors = _rename_legacy(tensors)
    entries = weight_map(unet)
    missing = [key for _, key, _ in entries if key not in tensors]
    if missing:
        raise ValueError(f"The weights file lacks {len(missing)} tensor(s) the config implies, "
                         f"e.g. {missing[:5]}")
    unused = sorted(set(tensors) - {key for _, key, _ in entries})
    if unused:
        raise ValueError(f"The weights file has {len(unused)} tensor(s) the config does not use, "
                         f"e.g. {unused[:5]}")
    for _, key, _ in entries:
        check_finite_tensor(key, np.asarray(tensors[key]))
    values = [_to_keras(tensors[key], transform, variable, key)
              for variable, key, transform in entries]
    for (variable, _, _), value in zip(entries, values):
        variable.assign(value)

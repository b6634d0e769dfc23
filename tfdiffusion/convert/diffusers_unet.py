"""diffusers' `UNet2DModel` config and weights as a tfdiffusion `UNet`, layer by layer."""

import re
from typing import Any, Dict, List, Tuple

import numpy as np

from tfdiffusion.convert.diffusers_files import check_config_keys
from tfdiffusion.convert.diffusers_files import check_finite_tensor
from tfdiffusion.nn import AttentionBlock
from tfdiffusion.nn import Downsample
from tfdiffusion.nn import ResBlock
from tfdiffusion.nn import UNet
from tfdiffusion.nn import Upsample

__all__ = ["load_unet_weights", "unet_from_config", "unet_kwargs", "weight_map"]

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


def unet_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """`UNet` constructor arguments equivalent to a `UNet2DModel` config.

    Raises:
        ValueError: for a block type, key or value the converter cannot map,
            naming it.
    """
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict (a parsed config.json). Received: "
                        f"{type(config).__name__}")
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise _bad("_class_name", name, "'UNet2DModel' (pixel-space DDPM/DDIM models)")
    check_config_keys(config, _HANDLED, _DEFAULTS, _WHERE, _INERT)
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int):
        raise _bad("sample_size", size, "an integer (square images)")
    channels = list(_get(config, "block_out_channels", (224, 448, 672, 896)))
    base = channels[0]
    if any(c % base for c in channels):
        raise _bad("block_out_channels", channels, f"multiples of the first entry ({base})")
    down = _get(config, "down_block_types",
                ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"))
    up = _get(config, "up_block_types",
              ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    if len(down) != len(channels):
        raise _bad("down_block_types", list(down), f"{len(channels)} entries (block_out_channels)")
    attention = _level_attention(down, up)
    in_channels = _get(config, "in_channels", 3)
    out_channels = _get(config, "out_channels", 3)
    if out_channels not in (in_channels, 2 * in_channels):
        raise _bad("out_channels", out_channels,
                   f"in_channels ({in_channels}) or twice it (learned variances)")
    if _get(config, "act_fn", "silu") not in ("silu", "swish"):
        raise _bad("act_fn", config["act_fn"], "'silu' (or its alias 'swish')")
    padding = _get(config, "downsample_padding", 1)
    if padding not in (0, 1):
        raise _bad("downsample_padding", padding, "0 (pad bottom/right) or 1 (pad every side)")
    shift = _get(config, "resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise _bad("resnet_time_scale_shift", shift, "'default' or 'scale_shift'")
    groups = _get(config, "norm_num_groups", 32)
    attn_groups = config.get("attn_norm_num_groups")
    if attn_groups is not None and attn_groups != groups:
        raise _bad("attn_norm_num_groups", attn_groups, f"None or norm_num_groups ({groups})")
    emb_dim = config.get("time_embedding_dim")
    if emb_dim is not None and emb_dim != 4 * base:
        raise _bad("time_embedding_dim", emb_dim, f"None or 4 * block_out_channels[0] ({4 * base})")
    return dict(
        image_size=size, in_channels=in_channels, base_channels=base,
        channel_mult=tuple(c // base for c in channels),
        num_res_blocks=_get(config, "layers_per_block", 2),
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attention) if a),
        dropout=float(_get(config, "dropout", 0.0)),
        num_classes=config.get("num_class_embeds"),
        learn_sigma=out_channels == 2 * in_channels,
        num_heads=1, num_head_channels=config.get("attention_head_dim", 8),
        num_groups=groups, use_scale_shift_norm=shift == "scale_shift",
        flip_sin_to_cos=bool(_get(config, "flip_sin_to_cos", True)),
        freq_shift=_get(config, "freq_shift", 0), norm_eps=float(_get(config, "norm_eps", 1e-5)),
        downsample_padding="same" if padding == 0 else "symmetric",
        middle_attention=bool(_get(config, "add_attention", True)),
        # diffusers' middle attention has a GroupNorm only with "default"
        # time conditioning, unless attn_norm_num_groups asks for one.
        middle_attention_norm=shift == "default" or attn_groups is not None,
        middle_scale_factor=float(_get(config, "mid_block_scale_factor", 1)),
        center_input=bool(_get(config, "center_input_sample", False)),
    )


def unet_from_config(config: Dict[str, Any], **overrides) -> UNet:
    """A built `UNet` with the architecture of a `UNet2DModel` config (fresh weights).

    Args:
        config: a parsed `config.json`.
        **overrides: `UNet` arguments replacing the mapped ones (e.g.
            `dropout` for fine-tuning).
    """
    kwargs = {**unet_kwargs(config), **overrides}
    unet = UNet(**kwargs)
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

"""The `UNet`'s parameter count from its arguments alone, before building it (to refuse a size too large to build)."""

from typing import Optional, Sequence

__all__ = ["unet_parameter_count"]


def _conv(kernel: int, channels_in: int, channels_out: int) -> int:
    return kernel * kernel * channels_in * channels_out + channels_out


def _dense(channels_in: int, channels_out: int) -> int:
    return channels_in * channels_out + channels_out


def _norm(channels: int) -> int:
    return 2 * channels  # gamma and beta


def _res_block(channels_in: int, channels_out: int, emb_dim: int, scale_shift: bool) -> int:
    count = (_norm(channels_in) + _conv(3, channels_in, channels_out)
             + _dense(emb_dim, channels_out * (2 if scale_shift else 1))
             + _norm(channels_out) + _conv(3, channels_out, channels_out))
    return count + (_conv(1, channels_in, channels_out) if channels_in != channels_out else 0)


def _attention(channels: int, use_norm: bool = True) -> int:
    return (_norm(channels) if use_norm else 0) + 4 * _dense(channels, channels)  # q, k, v, proj_out


def unet_parameter_count(image_size: int, in_channels: int, base_channels: int, channel_mult: Sequence[int],
                         num_res_blocks: int, attention_resolutions: Sequence[int],
                         num_classes: Optional[int] = None, learn_sigma: bool = False,
                         use_scale_shift_norm: bool = False, middle_attention: bool = True,
                         middle_attention_norm: bool = True) -> int:
    """The number of weights `UNet(...)` with these arguments holds once built (`count_params()`).

    Follows the UNet's topology as `UNet._forward` does: the time (and
    label) embedding, `conv_in`, per level `num_res_blocks` ResBlocks (each
    with its attention block at an attention resolution) and a Downsample
    but at the last level, the middle blocks, per level `num_res_blocks + 1`
    ResBlocks on the skip connections and an Upsample but at the first, then
    `norm_out` and `conv_out`. Arguments as `UNet`'s (already checked);
    plain integer arithmetic, so any size is cheap to count.

    Returns:
        The parameter count (int).
    """
    emb_dim = 4 * base_channels
    count = _dense(base_channels, emb_dim) + _dense(emb_dim, emb_dim)
    if num_classes is not None:
        count += (num_classes + 1) * emb_dim  # one more row: the null label
    count += _conv(3, in_channels, base_channels)
    channels, skips = base_channels, [base_channels]
    levels = len(channel_mult)
    for level, multiplier in enumerate(channel_mult):
        resolution, level_channels = image_size // 2**level, base_channels * multiplier
        for _ in range(num_res_blocks):
            count += _res_block(channels, level_channels, emb_dim, use_scale_shift_norm)
            channels = level_channels
            if resolution in attention_resolutions:
                count += _attention(channels)
            skips.append(channels)
        if level != levels - 1:
            count += _conv(3, channels, channels)
            skips.append(channels)
    count += 2 * _res_block(channels, channels, emb_dim, use_scale_shift_norm)
    if middle_attention:
        count += _attention(channels, middle_attention_norm)
    for level in reversed(range(levels)):
        resolution, level_channels = image_size // 2**level, base_channels * channel_mult[level]
        for _ in range(num_res_blocks + 1):
            count += _res_block(channels + skips.pop(), level_channels, emb_dim, use_scale_shift_norm)
            channels = level_channels
            if resolution in attention_resolutions:
                count += _attention(channels)
        if level != 0:
            count += _conv(3, channels, channels)
    out_channels = in_channels * (2 if learn_sigma else 1)
    return count + _norm(channels) + _conv(3, channels, out_channels)

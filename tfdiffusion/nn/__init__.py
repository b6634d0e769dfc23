"""Keras layers of the DDPM/ADM UNet and the `UNet` model itself."""

from tfdiffusion.nn.attention import AttentionBlock
from tfdiffusion.nn.embeddings import TimestepEmbedding
from tfdiffusion.nn.embeddings import timestep_embedding
from tfdiffusion.nn.normalization import GroupNorm
from tfdiffusion.nn.res_block import ResBlock
from tfdiffusion.nn.resample import Downsample
from tfdiffusion.nn.resample import Upsample
from tfdiffusion.nn.unet import UNet

__all__ = [
    "AttentionBlock",
    "Downsample",
    "GroupNorm",
    "ResBlock",
    "TimestepEmbedding",
    "UNet",
    "Upsample",
    "timestep_embedding",
]

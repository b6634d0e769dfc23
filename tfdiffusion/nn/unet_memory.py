"""`InferenceMemory`: the `UNet` mix-in that estimates the memory of one image's forward pass.

`sampling` reads the estimate (`inference_memory_elements`) to refuse a
sampling batch that cannot fit in memory before any work. It walks the
UNet's topology (`_forward`) on shapes; it needs the UNet's `image_size`,
`in_channels`, `time_embedding`, `conv_in`, `down_blocks` and `_down_keeps`.
"""

from tfdiffusion.nn.attention import AttentionBlock
from tfdiffusion.nn.res_block import ResBlock

__all__ = ["InferenceMemory"]


def _elements(shape):
    """Values per image of a `(1, H, W, C)` shape."""
    count = 1
    for dim in shape[1:]:
        count *= int(dim)
    return count


class InferenceMemory:
    """Mix-in for `UNet`: the float values alive at once in one image's forward pass."""

    def inference_memory_elements(self) -> int:
        """An estimate of the float values alive at once in one image's forward pass.

        The skip connections kept for the up path, plus the largest layer's
        temporaries (4 feature maps for a ResBlock; q, k, v, output and the
        heads x N x N logits and weights for attention). Used to refuse a
        sampling batch that cannot fit in memory, before any work.

        Returns:
            Float values per image (multiply by 4 bytes, and the batch).
        """
        h, w, c = self.image_size, self.image_size, self.in_channels
        state = {"skips": 0, "peak": 0}

        def apply(layer, shape, emb_shape):
            if isinstance(layer, ResBlock):
                out = tuple(layer.compute_output_shape(shape, emb_shape))
                temporaries = 4 * _elements(out) + _elements(shape)
            else:
                out = tuple(layer.compute_output_shape(shape))
                temporaries = 2 * _elements(out) + _elements(shape)
                if isinstance(layer, AttentionBlock):
                    positions = out[1] * out[2]
                    temporaries += 4 * _elements(out) + 2 * layer.num_heads * positions * positions
            state["peak"] = max(state["peak"], state["skips"] + temporaries)
            return out

        def concat(shape, skip_shape):
            return shape[:-1] + (shape[-1] + skip_shape[-1],)

        emb_shape = (1, self.time_embedding.output_dim)
        kept = {id(self.conv_in)} | {id(layer) for layer, keep in zip(self.down_blocks, self._down_keeps) if keep}

        def apply_counting(layer, shape, emb):
            out = apply(layer, shape, emb)
            if id(layer) in kept:  # a skip connection, alive until the up path uses it
                state["skips"] += _elements(out)
            return out

        self._forward((1, h, w, c), emb_shape, apply_counting, concat)
        return int(state["peak"])

"""`GradientCheckpointingSwitch`: the `UNet` mix-in that turns its ResBlocks' gradient checkpointing on or off.

The recomputation itself lives in `checkpointing.recompute_in_backward`,
which each `ResBlock` calls when its `gradient_checkpointing` is on; this
mix-in keeps the UNet's setting and its blocks' in step. It needs the UNet's
`_gradient_checkpointing`, `down_blocks`, `middle_blocks` and `up_blocks`.
"""

from tfdiffusion.nn.res_block import ResBlock
from tfdiffusion.validation import check_bool

__all__ = ["GradientCheckpointingSwitch"]


class GradientCheckpointingSwitch:
    """Mix-in for `UNet`: a settable `gradient_checkpointing` that reaches every ResBlock."""

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether training calls recompute each ResBlock's activations in the backward pass.

        Settable (as diffusers' `enable_gradient_checkpointing()`); set it
        before the training step is traced (the first `fit`), which keeps
        the choice it was traced with.
        """
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value):
        value = check_bool("gradient_checkpointing", value)
        self._gradient_checkpointing = value
        for layer in (*self.down_blocks, *self.middle_blocks, *self.up_blocks):
            if isinstance(layer, ResBlock):
                layer.gradient_checkpointing = value

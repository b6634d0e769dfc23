"""`DiffusionSampling`: the `GaussianDiffusion` mix-in of its sampling loops, DDPM and DDIM.

Both draw x_T from the seed and run a sampler of `tfdiffusion.samplers` on
the process (`self`); any registered sampler is available there.
"""

from typing import Any, Callable, Optional

import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion import samplers

__all__ = ["DiffusionSampling"]


class DiffusionSampling:
    """Mix-in for `GaussianDiffusion`: ancestral (DDPM) and DDIM sampling loops."""

    # ---------------------------------------------------------------- sampling
    def _sample_loop(self, name, model_fn, shape, num_steps, noise, seed, clip_denoised, model_kwargs,
                     spacing="leading", **options):
        base_seed = tfd_random.seed_pair(seed)
        if noise is None:
            noise = tfd_random.random_normal(shape, tfd_random.fold_in(base_seed, -1))
        noise = tf.convert_to_tensor(noise, tf.float32)
        if not noise.shape.is_compatible_with(tf.TensorShape(shape)):
            raise ValueError(f"`noise` must have the sample shape {list(shape)}. Received {noise.shape}")
        sampler = samplers.get_sampler(name)(self, spacing=spacing, clip_denoised=clip_denoised)
        return sampler.sample(model_fn, noise, num_steps, base_seed, model_kwargs, **options)

    def p_sample_loop(self, model_fn: Callable, shape: Any, noise: Any = None, seed: Any = None,
                      clip_denoised: bool = True, model_kwargs: Optional[dict] = None) -> tf.Tensor:
        """Ancestral (DDPM) sampling over all of this process's steps.

        For fewer steps, sample from `self.respace(num_steps)` (or use the
        "ddpm" sampler of `tfdiffusion.samplers` with `num_steps`).

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`.
            shape: `[B, ...]` of the samples.
            noise: optional x_T, standard normal of `shape`.
            seed: int or `[2]` int tensor; the same seed gives the same samples.
            clip_denoised: clip predicted x_0 to [-1, 1].
            model_kwargs: extra keyword arguments for `model_fn`.

        Returns:
            float32 samples of `shape` (x_0, roughly in [-1, 1]).
        """
        return self._sample_loop("ddpm", model_fn, shape, self.num_timesteps, noise, seed, clip_denoised,
                                 model_kwargs)

    def ddim_sample_loop(self, model_fn: Callable, shape: Any, num_steps: int = 50, eta: float = 0.0,
                         noise: Any = None, seed: Any = None, clip_denoised: bool = True,
                         model_kwargs: Optional[dict] = None, spacing: str = "leading") -> tf.Tensor:
        """DDIM sampling over `num_steps` evenly spaced steps (Song et al. 2021, Eq. 12).

        Args:
            num_steps: steps in [1, T].
            eta: 0 for deterministic DDIM, 1 for DDPM-like noise.
            spacing: "leading" (default), "trailing" or "linspace".
            Others as in `p_sample_loop`.

        Returns:
            float32 samples of `shape`.
        """
        return self._sample_loop("ddim", model_fn, shape, num_steps, noise, seed, clip_denoised,
                                 model_kwargs, spacing=spacing, eta=eta)

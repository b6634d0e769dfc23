"""Every kind of SavedModel tfdiffusion exports, and the op allow-list of `saved_model_ops.py` recomputed from them.

    python -m tests.saved_model_inventory     # from the repo root: exports each kind, prints the two lists

`tests/test_saved_model_check.py` exports the same kinds and checks that each
passes `check_saved_model_ops` and that the recomputed lists are within the
module's, so a change that makes the exports use a new op fails there until
the list is regenerated with this script.

The kinds span what `export_saved_model` varies: class-conditional and
unconditional networks; epsilon, x0 and v prediction; fixed small, fixed
large and learned variances; every registered sampler; every spacing
(karras with the samplers that take it); clipping on and off, dynamic
thresholding; zero terminal SNR; XLA on and off; warm-up requests on and
off; the UNet's options (scale-shift norm, attention or none, head
channels, diffusers' padding, centring and embedding options, gradient
checkpointing); float32, mixed_bfloat16 and mixed_float16 networks.
Networks are tiny (8x8 images, T = 20) so that the lot exports in about a minute.
The SavedModels shipped in `saved_models/` (written by earlier versions of
the export) count too: their ops are in the lists, so they keep loading.
"""

import contextlib
import glob
import os
import sys
import tempfile
from typing import Dict, Tuple

import keras

from tfdiffusion import export
from tfdiffusion import samplers as samplers_lib
from tfdiffusion import saved_model_check
from tfdiffusion import schedules
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.model import DiffusionModel
from tfdiffusion.nn import UNet

T = 20
_TINY = dict(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(4,), dropout=0.0, num_groups=4)
# Samplers whose network calls differ: integer timesteps (ddim) and continuous ones (heun). Kinds that vary the
# network only export these two; kinds that vary the diffusion or the sampling export every sampler.
_NETWORK_SAMPLERS = ("ddim", "heun")
_KARRAS_SAMPLERS = tuple(name for name in samplers_lib.sampler_names()
                         if "karras" in samplers_lib.get_sampler(name).spacings)

# kind -> (network options, diffusion options, export options, dtype policy)
KINDS: Dict[str, Tuple[dict, dict, dict, str]] = {
    "conditional-epsilon-every-sampler": (
        dict(num_classes=3, use_scale_shift_norm=True), dict(), dict(), "float32"),
    "unconditional-v-learned-range-linear-linspace-unclipped-xla": (
        dict(learn_sigma=True),
        dict(model_mean_type="v", model_var_type="learned_range", loss_type="hybrid", schedule="linear",
             num_timesteps=50),
        dict(spacing="linspace", clip_denoised=False, jit_compile=True, warmup_requests=False), "float32"),
    "conditional-x0-fixed-large-karras-threshold": (
        dict(num_classes=2), dict(model_mean_type="x0", model_var_type="fixed_large"),
        dict(samplers=_KARRAS_SAMPLERS, default_sampler="dpmpp_2m", spacing="karras", threshold=0.995,
             clip_denoised=False), "float32"),
    "conditional-zero-terminal-snr-trailing": (
        dict(num_classes=3, learn_sigma=True),
        dict(zero_terminal_snr=True, model_mean_type="v", model_var_type="learned_range", loss_type="hybrid"),
        dict(spacing="trailing", jit_compile=True), "float32"),
    "diffusers-style-network": (
        dict(num_classes=3, downsample_padding="symmetric", num_head_channels=4, flip_sin_to_cos=False,
             freq_shift=1, middle_attention_norm=False, middle_scale_factor=2.0, center_input=True,
             norm_eps=1e-6, gradient_checkpointing=True),
        dict(), dict(samplers=_NETWORK_SAMPLERS), "float32"),
    "no-attention-network": (
        dict(attention_resolutions=(), middle_attention=False, num_res_blocks=2, channel_mult=(1, 1, 2)),
        dict(), dict(samplers=_NETWORK_SAMPLERS, warmup_requests=False), "float32"),
    "mixed-bfloat16-network": (
        dict(num_classes=3, learn_sigma=True), dict(model_var_type="learned_range", loss_type="hybrid"),
        dict(samplers=_NETWORK_SAMPLERS), "mixed_bfloat16"),
    "mixed-float16-network": (
        dict(), dict(), dict(samplers=_NETWORK_SAMPLERS, jit_compile=True), "mixed_float16"),
}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The exports shipped with the repository: saved_models/NAME/VERSION.
SHIPPED = sorted(os.path.dirname(path) for path in glob.glob(os.path.join(REPO, "saved_models", "*", "*",
                                                                           "saved_model.pb")))


@contextlib.contextmanager
def _global_policy(name: str):
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def build_kind(kind: str) -> Tuple[DiffusionModel, dict]:
    """The model of one kind and its export options."""
    network_options, diffusion_options, export_options, policy = KINDS[kind]
    diffusion_options = dict(diffusion_options)
    betas = schedules.get_beta_schedule(diffusion_options.pop("schedule", "cosine"),
                                        diffusion_options.pop("num_timesteps", T))
    if diffusion_options.pop("zero_terminal_snr", False):
        betas = schedules.rescale_zero_terminal_snr(betas)
    with _global_policy(policy):
        network = UNet(**{**_TINY, **network_options})
        model = DiffusionModel(network, GaussianDiffusion(betas, **diffusion_options), label_dropout=0.0)
    return model, export_options


def export_kind(kind: str, base_dir: str) -> str:
    """Exports one kind into `base_dir/KIND`; returns the version directory."""
    model, options = build_kind(kind)
    policy = KINDS[kind][3]
    with _global_policy(policy):  # as a script under that policy would export it
        return export.export_saved_model(model, os.path.join(base_dir, kind), max_images=2, **options)


def recompute_op_lists(version_dirs) -> Tuple[frozenset, frozenset, frozenset]:
    """`(ALLOWED_OPS, SAVE_OPS, RESTORE_OPS)` as the exports in `version_dirs` use them.

    ALLOWED_OPS: every op type found outside the variable saver's own code;
    SAVE_OPS, RESTORE_OPS: the other op types, found only in code that only
    the saver's save (restore) function reaches.
    """
    found = {"outside": set(), saved_model_check.SAVE: set(), saved_model_check.RESTORE: set()}
    for version_dir in version_dirs:
        sites = saved_model_check.op_sites(saved_model_check.read_saved_model_proto(version_dir))
        for op, units in sites.items():
            for roots in units.values():
                only = next(iter(roots)) if len(roots) == 1 else None
                found[only if only in found else "outside"].add(op)
    allowed = found["outside"]
    return (frozenset(allowed), frozenset(found[saved_model_check.SAVE] - allowed),
            frozenset(found[saved_model_check.RESTORE] - allowed))


def _format(name: str, ops) -> str:
    lines, line = [], "   "
    for op in sorted(ops):
        item = f' "{op}",'
        if len(line) + len(item) > 116:
            lines.append(line)
            line = "   "
        line += item
    lines.append(line)
    return f"{name} = frozenset({{\n" + "\n".join(lines) + "\n})"


def main() -> int:
    with tempfile.TemporaryDirectory() as base:
        dirs = []
        for kind in KINDS:
            print(f"exporting {kind}", file=sys.stderr, flush=True)
            dirs.append(export_kind(kind, base))
        allowed, save, restore = recompute_op_lists(dirs + SHIPPED)
    print(_format("ALLOWED_OPS", allowed))
    print(_format("SAVE_OPS", save))
    print(_format("RESTORE_OPS", restore))
    return 0


if __name__ == "__main__":
    sys.exit(main())

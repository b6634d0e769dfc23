"""Where a tfdiffusion training process's memory goes: resident memory after each phase.

    python benchmarks/memory_phases.py --config ddpm-cifar10 [--cache-dir DIR] [--lowered-steps]
        [--xla-buffers] [--no-jit-compile] [--gradient-checkpointing]

Builds `compare_diffusers.py`'s configuration as that benchmark's TensorFlow
worker does (`unet_from_config`, `DiffusionModel` with EMA, `FusedAdamW`,
XLA) and records the process's resident set (current and peak, MB) and the
time after: importing tfdiffusion and TensorFlow, building the network and
its EMA copy, building the optimizer's slots, tracing the training step,
its first call (instantiation, XLA lowering and compilation or a load from
the persistent cache, one step), `malloc_trim(0)` (memory glibc holds free),
and three more steps. With `--lowered-steps` the steps run through `fit` as
the `tfdiffusion` command runs them (`enable_compilation_cache(lowered_steps=True)`;
no separate trace phase). Run it twice with the same `--cache-dir` to see a
second start.

`--xla-buffers` has XLA write its buffer assignment (to a temporary folder)
and reports the compiled training step's memory plan in MiB: the variables
it reads and updates in place (parameters), its one temporary buffer
(activations kept for the backward pass, gradients, scratch) and their sum.
XLA writes the plan only when it compiles, so use it with an empty cache.
`--gradient-checkpointing` builds the UNet with that option (each ResBlock's
activations recomputed in the backward pass). `seconds_per_step` is the
mean of the three later steps. Prints JSON.
"""

import argparse
import ctypes
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_diffusers import CONFIGS  # noqa: E402  (imports no framework)
from machine import machine_summary  # noqa: E402
from machine import peak_resident_mb  # noqa: E402
from machine import resident_mb  # noqa: E402

_ALLOCATION = re.compile(r"^allocation \d+: size (\d+), (.*)$", re.MULTILINE)


def xla_memory_plan(dump_dir):
    """The largest compiled program's buffer plan from XLA's dump, in MiB (None if XLA wrote none); removes the dump."""
    plans = []
    for path in glob.glob(os.path.join(dump_dir, "*buffer-assignment.txt")):
        with open(path) as f:
            text = f.read()
        parameters = temporary = 0
        for size, kind in _ALLOCATION.findall(text):
            if "parameter" in kind:
                parameters += int(size)
            elif "preallocated-temp" in kind:
                temporary += int(size)
        plans.append(dict(program=os.path.basename(path).split(".")[1][:80],
                          parameters_mib=round(parameters / 2**20, 1),
                          temporary_mib=round(temporary / 2**20, 1),
                          total_mib=round((parameters + temporary) / 2**20, 1)))
    shutil.rmtree(dump_dir, ignore_errors=True)  # the dump holds every program's HLO and LLVM IR
    return max(plans, key=lambda plan: plan["total_mib"]) if plans else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ddpm-cifar10", choices=sorted(CONFIGS))
    parser.add_argument("--cache-dir", default=None,
                        help="XLA compilation cache (default: tfdiffusion's user cache)")
    parser.add_argument("--lowered-steps", action="store_true",
                        help="train through fit with lowered steps, as the tfdiffusion command does")
    parser.add_argument("--xla-buffers", action="store_true",
                        help="report XLA's buffer plan of the compiled step (needs an empty cache)")
    parser.add_argument("--no-jit-compile", action="store_true", help="graph mode instead of XLA")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute the ResBlocks' activations in the backward pass (UNet option)")
    args = parser.parse_args(argv)
    jit = not args.no_jit_compile
    if args.lowered_steps and not jit:
        parser.error("--lowered-steps needs XLA (drop --no-jit-compile)")

    dump_dir = None
    if args.xla_buffers:  # before tfdiffusion and TensorFlow are imported: XLA reads its flags once
        dump_dir = tempfile.mkdtemp(prefix="xla-buffers-")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_dir}"
                                   " --xla_dump_hlo_pass_re=NONE").strip()
    phases = []

    def record(name):
        phases.append(dict(phase=name, seconds=round(time.perf_counter() - START, 2),
                           resident_mb=round(resident_mb()), peak_mb=round(peak_resident_mb())))
        print(json.dumps(phases[-1]), file=sys.stderr, flush=True)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tfdiffusion as tfdiff  # first: its defaults (oneDNN, XLA's scheduler) apply, as in the CLI
    import keras
    import tensorflow as tf

    from tfdiffusion.convert import unet_from_config

    if jit:
        tfdiff.enable_compilation_cache(args.cache_dir, lowered_steps=args.lowered_steps)
    record("import")
    config = CONFIGS[args.config]
    keras.utils.set_random_seed(0)
    unet = unet_from_config(config["unet"], gradient_checkpointing=args.gradient_checkpointing)
    model = tfdiff.DiffusionModel(
        unet, tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("linear", 1000)), ema_decay=0.9999)
    model.compile(optimizer=tfdiff.FusedAdamW(2e-4, weight_decay=0.0), jit_compile=jit)
    size, channels = config["unet"]["sample_size"], config["unet"]["in_channels"]
    images = tf.random.stateless_uniform((config["batch"], size, size, channels), seed=[5, 6],
                                         minval=-1.0, maxval=1.0)
    record("network and EMA copy")
    model.optimizer.build(model.network.trainable_variables)
    record("optimizer slots")
    if args.lowered_steps:
        batches = tf.data.Dataset.from_tensors(images).repeat()

        def train(steps):
            model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    else:
        step = tf.function(model.train_step, jit_compile=jit)
        concrete = step.get_concrete_function(tf.TensorSpec(images.shape))
        record("trace")

        def train(steps):
            for _ in range(steps):
                float(concrete(images)["loss"])
    train(1)
    record("first call")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    record("malloc_trim")
    begin = time.perf_counter()
    train(3)
    seconds_per_step = (time.perf_counter() - begin) / 3  # with --lowered-steps: one fit call's 3 steps
    record("three more steps")
    print(json.dumps(dict(benchmark="memory_phases", config=args.config, batch=config["batch"],
                          jit_compile=jit, lowered_steps=args.lowered_steps,
                          gradient_checkpointing=args.gradient_checkpointing,
                          seconds_per_step=round(seconds_per_step, 3),
                          xla_flags=os.environ.get("XLA_FLAGS", ""),
                          onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                          params=int(unet.count_params()), phases=phases,
                          xla_memory_plan=xla_memory_plan(dump_dir) if dump_dir else None,
                          machine=machine_summary()), indent=2))


if __name__ == "__main__":
    main()

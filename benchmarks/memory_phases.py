"""Where a tfdiffusion training process's memory goes: resident memory after each phase.

    python benchmarks/memory_phases.py --config ddpm-cifar10 [--cache-dir DIR] [--no-jit-compile]

Builds `compare_diffusers.py`'s configuration as that benchmark's TensorFlow
worker does (`unet_from_config`, `DiffusionModel` with EMA, `FusedAdamW`,
XLA) and records the process's resident set (current and peak, MB) and the
time after: importing tfdiffusion and TensorFlow, building the network and
its EMA copy, building the optimizer's slots, tracing the training step,
its first call (instantiation, XLA lowering and compilation or a load from
the persistent cache, one step), `malloc_trim(0)` (memory glibc holds free),
and three more steps. Run it twice with the same `--cache-dir` to see a
second start. Prints JSON.
"""

import argparse
import ctypes
import json
import os
import sys
import time

START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_diffusers import CONFIGS  # noqa: E402  (imports no framework)
from machine import machine_summary  # noqa: E402
from machine import peak_resident_mb  # noqa: E402
from machine import resident_mb  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ddpm-cifar10", choices=sorted(CONFIGS))
    parser.add_argument("--cache-dir", default=None,
                        help="XLA compilation cache (default: tfdiffusion's user cache)")
    parser.add_argument("--no-jit-compile", action="store_true", help="graph mode instead of XLA")
    args = parser.parse_args(argv)

    phases = []

    def record(name):
        phases.append(dict(phase=name, seconds=round(time.perf_counter() - START, 2),
                           resident_mb=round(resident_mb()), peak_mb=round(peak_resident_mb())))
        print(json.dumps(phases[-1]), file=sys.stderr, flush=True)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tfdiffusion as tfdiff  # first: its defaults (oneDNN) apply, as in the CLI
    import keras
    import tensorflow as tf

    from tfdiffusion.convert import unet_from_config

    jit = not args.no_jit_compile
    if jit:
        tfdiff.enable_compilation_cache(args.cache_dir)
    record("import")
    config = CONFIGS[args.config]
    keras.utils.set_random_seed(0)
    unet = unet_from_config(config["unet"])
    model = tfdiff.DiffusionModel(
        unet, tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("linear", 1000)), ema_decay=0.9999)
    model.compile(optimizer=tfdiff.FusedAdamW(2e-4, weight_decay=0.0), jit_compile=jit)
    size, channels = config["unet"]["sample_size"], config["unet"]["in_channels"]
    images = tf.random.stateless_uniform((config["batch"], size, size, channels), seed=[5, 6],
                                         minval=-1.0, maxval=1.0)
    record("network and EMA copy")
    model.optimizer.build(model.network.trainable_variables)
    record("optimizer slots")
    step = tf.function(model.train_step, jit_compile=jit)
    concrete = step.get_concrete_function(tf.TensorSpec(images.shape))
    record("trace")
    float(concrete(images)["loss"])
    record("first call")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    record("malloc_trim")
    for _ in range(3):
        float(concrete(images)["loss"])
    record("three more steps")
    print(json.dumps(dict(benchmark="memory_phases", config=args.config, batch=config["batch"],
                          jit_compile=jit, params=int(unet.count_params()), phases=phases,
                          machine=machine_summary()), indent=2))


if __name__ == "__main__":
    main()

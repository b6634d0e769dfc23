"""Training throughput on 1 vs 2 devices, with and without XLA, float32 vs mixed_bfloat16; prints JSON.

Usage (from the repo root):

    python benchmarks/distribute.py --output benchmarks/results/distribute.json
    python benchmarks/distribute.py --config shapes --batch 32 --steps 20   # the defaults

Each cell of the grid (devices 1 or 2, XLA off or on, float32 or
mixed_bfloat16) runs in its own subprocess, because logical CPU devices
must be configured before TensorFlow starts: with 2 devices the process
splits its CPU into 2 logical devices and trains under a 2-replica
`MirroredStrategy` (with XLA, each replica's forward and backward pass is
compiled on its own device: `DiffusionModel`'s XLA per replica); with 1
device it trains without a strategy. The global batch is the same in every
cell. A cell times `model.train_function` on one in-memory batch (no input
pipeline): the median of `--steps` steps after `--warmup` untimed ones; the
first `fit` call (trace + compile + one step) is reported as
`first_step_seconds`.

On a CPU, 2 logical devices share the same cores: the 2-device figures show
the overhead of the strategy (splitting, the gradient all-reduce, per-replica
programs), not a speed-up. On GPUs and TPUs each replica has its own chip.
Whether the CPU has bf16 instructions (AVX512_BF16, AMX) is recorded: without
them bfloat16 runs emulated and is slower than float32.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import throughput  # benchmarks/throughput.py: the machine description

CELL = r"""
import json, os, sys, time
import tensorflow as tf
devices, jit, policy, config, batch, steps, warmup = json.loads(sys.argv[1])
cpus = tf.config.list_physical_devices("CPU")
if devices > 1:
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices)
import keras
import tfdiffusion as tfdiff
from tfdiffusion import presets

keras.mixed_precision.set_global_policy(policy)
preset = presets.get_preset(config)
strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)]) if devices > 1
            else tf.distribute.get_strategy())
with strategy.scope():
    model = presets.build_model(preset, num_classes=8, seed=0)
    model.compile(optimizer=presets.make_optimizer(preset), jit_compile=jit)
shape = (batch,) + tuple(model.image_shape)
images = tf.random.stateless_uniform(shape, seed=[5, 6], minval=-1.0, maxval=1.0)
images = tf.round((images + 1) * 127.5) / 127.5 - 1
labels = tf.random.stateless_uniform([batch], seed=[7, 8], maxval=8, dtype=tf.int32)
dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
start = time.perf_counter()
model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
first = time.perf_counter() - start
iterator = iter(strategy.experimental_distribute_dataset(dataset)) if devices > 1 else iter(dataset)
def step():
    return float(keras.ops.convert_to_numpy(model.train_function(iterator)["loss"]))
for _ in range(warmup):
    step()
seconds = []
for _ in range(steps):
    start = time.perf_counter()
    loss = step()
    seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "first_step_seconds": first, "final_loss": loss,
                  "replicas": strategy.num_replicas_in_sync,
                  "xla_per_replica": bool(getattr(model, "_xla_per_replica", False))}))
"""


def run_cell(devices, jit, policy, args):
    payload = json.dumps([devices, jit, policy, args.config, args.batch, args.steps, args.warmup])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", CELL, payload], capture_output=True, text=True, env=env)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1][:500] if result.stderr.strip() else "failed"}
    cell = json.loads(result.stdout.strip().splitlines()[-1])
    step = statistics.median(cell["seconds"])
    cell.update(images_per_second=round(args.batch / step, 2), step_seconds_median=round(step, 4))
    return cell


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="shapes", help="a preset name (default: shapes)")
    parser.add_argument("--batch", type=int, default=32, help="global batch (default: 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per cell (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per cell (default: 3)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    results = {"benchmark": "distribute", "config": args.config, "global_batch": args.batch,
               "machine": dict(throughput.machine_info(),
                               load_average_at_start=[round(x, 2) for x in os.getloadavg()]),
               "cells": []}
    for policy in ("float32", "mixed_bfloat16"):
        for jit in (False, True):
            for devices in (1, 2):
                begin = time.time()
                cell = run_cell(devices, jit, policy, args)
                cell.update(devices=devices, xla=jit, policy=policy, wall_seconds=round(time.time() - begin, 1))
                cell.pop("seconds", None)
                print(json.dumps(cell), file=sys.stderr, flush=True)
                results["cells"].append(cell)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()

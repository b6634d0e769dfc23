"""Time to the first training step, cold and on later starts, with the traced or the lowered step.

    python benchmarks/first_step.py [--config ddpm-cifar10] [--starts 3]

Each start is a fresh process that builds `compare_diffusers.py`'s
configuration as that benchmark's TensorFlow worker does (`unet_from_config`,
`DiffusionModel` with EMA, `FusedAdamW`, XLA, the same batch) and times its
first `fit` step (the `first_step_seconds` of `compare_diffusers.py`) and
the time from process start to the end of that step. Two kinds of start,
each with its own XLA cache folder, interleaved start by start so that
machine noise hits both alike: "traced" (XLA's persistent cache only: every
start traces and lowers the step) and "lowered"
(`enable_compilation_cache(lowered_steps=True)`, as the `tfdiffusion`
command does: later starts run the saved StableHLO step). Start 1 of each is
cold. Prints JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from compare_diffusers import CONFIGS  # noqa: E402  (imports no framework)
from machine import machine_summary  # noqa: E402

KINDS = ("traced", "lowered")


def worker(config_name, cache_dir, lowered):
    """One start: prints its timings as JSON on the last line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tfdiffusion as tfdiff  # first: its defaults (oneDNN) apply, as in the CLI
    import keras
    import tensorflow as tf

    from tfdiffusion.convert import unet_from_config

    tfdiff.enable_compilation_cache(cache_dir, lowered_steps=lowered)
    imported = time.perf_counter() - START
    config = CONFIGS[config_name]
    keras.utils.set_random_seed(0)
    model = tfdiff.DiffusionModel(unet_from_config(config["unet"]),
                                  tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("linear", 1000)),
                                  ema_decay=0.9999)
    model.compile(optimizer=tfdiff.FusedAdamW(2e-4, weight_decay=0.0), jit_compile=True)
    size, channels = config["unet"]["sample_size"], config["unet"]["in_channels"]
    images = tf.random.stateless_uniform((config["batch"], size, size, channels), seed=[5, 6],
                                         minval=-1.0, maxval=1.0)
    dataset = tf.data.Dataset.from_tensors(images).repeat()
    begin = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - begin
    step = getattr(model, "lowered_train_step", None)
    print(json.dumps(dict(import_seconds=round(imported, 2), first_step_seconds=round(first, 2),
                          start_to_first_step_done_seconds=round(time.perf_counter() - START, 2),
                          loss=history.history["loss"][0],
                          entries_loaded=len(step.loaded) if step else 0,
                          entries_saved=len(step.saved) if step else 0)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ddpm-cifar10", choices=sorted(CONFIGS))
    parser.add_argument("--starts", type=int, default=3, help="starts of each kind (the first is cold)")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "CACHE", "LOWERED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2] == "1")
        return
    report = dict(benchmark="first_step", config=args.config, batch=CONFIGS[args.config]["batch"],
                  machine=machine_summary(), starts={kind: [] for kind in KINDS})
    env = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS", "TFDIFFUSION_LOWERED_STEPS")}
    with tempfile.TemporaryDirectory(prefix="tfdiffusion-first-step-") as root:
        for start in range(args.starts):
            for kind in KINDS:
                cache = os.path.join(root, kind)
                result = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", args.config, cache,
                     "1" if kind == "lowered" else "0"], capture_output=True, text=True, env=env, timeout=1800)
                if result.returncode != 0:
                    raise SystemExit(f"{kind} start {start + 1} failed:\n{result.stderr[-3000:]}")
                timings = json.loads(result.stdout.strip().splitlines()[-1])
                report["starts"][kind].append(timings)
                print(f"{kind} start {start + 1}: {timings}", file=sys.stderr, flush=True)
    report["later_starts_median_first_step_seconds"] = {
        kind: statistics.median(s["first_step_seconds"] for s in starts[1:]) if len(starts) > 1 else None
        for kind, starts in report["starts"].items()}
    report["wall_seconds"] = round(time.perf_counter() - START, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

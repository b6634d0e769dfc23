"""Training and sampling throughput of the UNet configurations, with FLOP utilisation; prints JSON.

Usage (from the repo root):

    python benchmarks/throughput.py --quick                      # validate: ~2 timed steps each
    python benchmarks/throughput.py --output results.json        # the full benchmark
    python benchmarks/throughput.py --configs mnist-small --modes xla --steps 20

For each configuration and mode ("eager": `compile(jit_compile=False)`, a
`tf.function` graph without XLA; "xla": `jit_compile=True`) it measures

- training images/s: the real `DiffusionModel.train_step`, built and first
  run by `model.fit` on one in-memory batch (this call's time, minus a
  steady step, is the compile time), then called through
  `model.train_function` on the same batch (`Dataset.from_tensors(batch)
  .repeat()`, so no input pipeline cost); the median over `--steps` timed
  steps after `--warmup` untimed ones;
- sampling network evaluations/s: `model.generate(num_images=batch,
  num_steps=K)` (the DDIM `tf.while_loop` sampler, EMA network), timed per
  call; one evaluation = one image through the UNet once, so evals/s =
  batch * K / seconds (the same unit as diffusers' images/s through
  `UNet2DModel.forward`);
- FLOP utilisation: achieved GFLOP/s over the machine's float32 matmul
  ceiling, measured here as the median GFLOP/s of a 2048x2048 `tf.matmul`
  (the best of graph and XLA, before and after the models; numpy's is
  recorded beside it).

Forward FLOPs per image are counted analytically from the traced forward
graph: 2 x the multiply-accumulates of every Conv2D, MatMul and BatchMatMul
(static shapes, batch 1); elementwise work (GroupNorm, SiLU, softmax, adds)
is excluded, as in the usual "2 x MACs" convention. The TF profiler's count
(`tf.compat.v1.profiler`, which adds elementwise ops) is reported beside it.
A training step counts 3 x forward FLOPs (forward + backward ~ 2 x forward).

Everything but the JSON goes to stderr; the JSON goes to stdout and, with
`--output`, to a file. Timings on a shared machine are noisy: the load
average before and after the run is recorded.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfdiffusion as tfdiff  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (benchmarks/machine.py)

CONFIGS = {
    "ddpm-cifar10": dict(
        batch=8,
        unet=dict(image_size=32, in_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2),
                  num_res_blocks=2, attention_resolutions=(16,), dropout=0.1),
    ),
    "mnist-small": dict(
        batch=64,
        unet=dict(image_size=28, in_channels=1, base_channels=32, channel_mult=(1, 2, 4),
                  num_res_blocks=2, attention_resolutions=(7,), dropout=0.1, num_groups=8),
    ),
}
MODES = ("eager", "xla")

# PyTorch diffusers `UNet2DModel`, fp32, 2 threads, PyTorch 2.13, on the same
# 2-core CPU kind (numbers given with the benchmark's brief, not measured here).
REFERENCE = {
    "source": "PyTorch 2.13 diffusers UNet2DModel, fp32, 2 threads, same 2-core CPU kind",
    "evals_definition": "images per second through UNet2DModel.forward",
    "ddpm-cifar10": {
        "batch": 8,
        "train_images_per_second": [4.2, 4.6],
        "train_gflop_per_image": 37.5,
        "train_utilisation": 0.75,
        "matmul_ceiling_gflops": 220.0,
        "sample_evals_per_second": 14.0,
    },
    "mnist-small": {
        "batch": 64,
        "train_images_per_second": [46.0, 52.0],
        "sample_evals_per_second": [130.0, 170.0],
    },
}

QUICK = dict(steps=2, warmup=1, sample_steps=2, sample_repeats=2, matmul_repeats=3)
FULL = dict(steps=10, warmup=2, sample_steps=10, sample_repeats=5, matmul_repeats=10)


def _format_matmul(result):
    return ", ".join(f"{name} {result[name]['median_gflops']:.1f}" for name in ("eager", "xla", "numpy")) \
        + " GFLOP/s (eager = tf.function graph)"


def log(message):
    print(f"[throughput {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values):
    return float(statistics.median(values))


# ------------------------------------------------------------------ machine
def machine_info():
    return {
        "cpu_model": machine.cpu_model(),
        "cpu_flags": machine.cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tfdiffusion": tfdiff.__version__,
        "git_commit": machine.git("rev-parse", "HEAD"),
        "git_dirty": bool(machine.git("status", "--porcelain", "--untracked-files=no")),
        "env": {name: os.environ.get(name) for name in (
            "OPENBLAS_CORETYPE", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "TF_XLA_FLAGS")},
        # 0 means "TF's default" (one thread per core for intra-op).
        "tf_threading": {
            "intra_op_parallelism_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_parallelism_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        },
    }


# --------------------------------------------------------- matmul ceiling
def measure_matmul(repeats, n=2048):
    """Median GFLOP/s of an `n x n` float32 matmul: TF graph, TF XLA and numpy (for context)."""
    a = tf.random.stateless_normal([n, n], seed=[1, 2])
    b = tf.random.stateless_normal([n, n], seed=[3, 4])
    flop = 2.0 * n**3
    calls = {mode: tf.function(lambda x, y: tf.matmul(x, y), jit_compile=mode == "xla")
             for mode in MODES}
    calls = {mode: (lambda fn=fn: fn(a, b).numpy()) for mode, fn in calls.items()}
    a_np, b_np = a.numpy(), b.numpy()
    calls["numpy"] = lambda: a_np @ b_np
    result = {"load_average": machine.load_average()}
    for name, call in calls.items():
        call()
        call()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        result[name] = {"median_gflops": flop / median(seconds) / 1e9, "seconds": seconds}
    return result


# ------------------------------------------------------------------ FLOPs
def _matmul_macs(op):
    """Multiply-accumulates of a Conv2D / MatMul / BatchMatMul op from static shapes."""
    if op.type == "Conv2D":
        out = op.outputs[0].shape.as_list()
        kh, kw, cin, _ = op.inputs[1].shape.as_list()
        return int(np.prod(out)) * kh * kw * cin
    if op.type == "MatMul":
        a = op.inputs[0].shape.as_list()
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return int(np.prod(op.outputs[0].shape.as_list())) * k
    if op.type.startswith("BatchMatMul"):
        a = op.inputs[0].shape.as_list()
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return int(np.prod(op.outputs[0].shape.as_list())) * k
    return 0


def count_forward_flops(unet, image_shape):
    """Forward FLOPs per image of `unet`: analytic (2 x conv/matmul MACs) and the TF profiler's."""
    fn = tf.function(lambda x, t: unet(x, t, training=False))
    graph = fn.get_concrete_function(
        tf.TensorSpec((1,) + image_shape, tf.float32), tf.TensorSpec([1], tf.int32)).graph
    by_type = {}
    for op in graph.get_operations():
        if op.type in ("Einsum", "DepthwiseConv2dNative", "Conv3D"):
            raise NotImplementedError(f"FLOP counting does not handle {op.type} ops ({op.name})")
        macs = _matmul_macs(op)
        if macs:
            by_type[op.type] = by_type.get(op.type, 0) + macs
    analytic = 2 * sum(by_type.values())
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    try:
        profiler = tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops
    except Exception as error:  # the profiler is optional context only
        log(f"tf.compat.v1.profiler failed ({error!r}); reporting the analytic count only")
        profiler = None
    return {
        "forward_gflop_per_image": analytic / 1e9,
        "forward_gflop_per_image_by_op": {k: 2 * v / 1e9 for k, v in sorted(by_type.items())},
        "forward_gflop_per_image_tf_profiler": None if profiler is None else profiler / 1e9,
        "train_gflop_per_image": 3 * analytic / 1e9,
    }


# ------------------------------------------------------------------ model
def build_model(unet_kwargs, jit_compile):
    keras.utils.set_random_seed(0)
    unet = tfdiff.UNet(**unet_kwargs)
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("linear", 1000))
    model = tfdiff.DiffusionModel(unet, diffusion)
    model.compile(optimizer=tfdiff.optimizers.FusedAdamW(2e-4), jit_compile=jit_compile)
    return model


def _fixed_batch(batch, image_shape):
    return tf.random.stateless_uniform((batch,) + image_shape, seed=[5, 6], minval=-1.0, maxval=1.0)


def bench_train(model, images, steps, warmup):
    """Times `train_step`: the first `fit` call (build + trace + compile + step), then steady steps."""
    traces = [0]
    train_step = model.train_step

    def counted_train_step(data):
        traces[0] += 1  # Python runs only while tracing.
        return train_step(data)

    model.train_step = counted_train_step
    dataset = tf.data.Dataset.from_tensors(images).repeat()
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    iterator = iter(dataset)

    def step():
        logs = model.train_function(iterator)
        return float(logs["loss"])  # waits for the step

    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        seconds.append(time.perf_counter() - start)
    batch = int(images.shape[0])
    step_median = median(seconds)
    return {
        "images_per_second": batch / step_median,
        "step_seconds_median": step_median,
        "step_seconds": seconds,
        "first_call_seconds": first,
        "compile_seconds": max(first - step_median, 0.0),
        "traces": traces[0],
        "model_jit_compile": bool(model.jit_compile),
        "final_loss": loss,
    }


def bench_sample(model, batch, num_steps, repeats, jit_compile):
    """Times `model.generate` (DDIM, `num_steps` network evaluations of the batch per call)."""

    def call():
        return model.generate(num_images=batch, sampler="ddim", num_steps=num_steps, seed=0,
                              jit_compile=jit_compile)

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    call()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    call_median = median(seconds)
    traces = sum(fn.experimental_get_tracing_count()
                 for fn in getattr(model, "_generate_fns", {}).values())
    return {
        "evals_per_second": batch * num_steps / call_median,
        "num_steps": num_steps,
        "call_seconds_median": call_median,
        "call_seconds": seconds,
        "first_call_seconds": first,
        "compile_seconds": max(first - call_median, 0.0),
        "traces": traces,
    }


def bench_config(name, settings, modes):
    config = CONFIGS[name]
    batch, unet_kwargs = config["batch"], config["unet"]
    image_shape = (unet_kwargs["image_size"],) * 2 + (unet_kwargs["in_channels"],)
    result = {"unet": {k: list(v) if isinstance(v, tuple) else v for k, v in unet_kwargs.items()},
              "batch": batch, "image_shape": list(image_shape), "train": {}, "sample": {}}
    images = _fixed_batch(batch, image_shape)
    for mode in modes:
        keras.backend.clear_session()
        gc.collect()
        model = build_model(unet_kwargs, jit_compile=mode == "xla")
        if "params" not in result:
            result["params"] = int(model.network.count_params())
            result.update(count_forward_flops(model.network, image_shape))
            log(f"{name}: {result['params'] / 1e6:.1f}M params, "
                f"{result['forward_gflop_per_image']:.2f} forward GFLOP/image")
        log(f"{name} [{mode}]: training, batch {batch}, {settings['warmup']} warm-up + "
            f"{settings['steps']} timed steps")
        train = bench_train(model, images, settings["steps"], settings["warmup"])
        train["achieved_gflops"] = train["images_per_second"] * result["train_gflop_per_image"]
        result["train"][mode] = train
        log(f"{name} [{mode}]: {train['images_per_second']:.2f} img/s, "
            f"{train['achieved_gflops']:.1f} GFLOP/s (first call {train['first_call_seconds']:.1f} s, "
            f"{train['traces']} trace(s))")
        log(f"{name} [{mode}]: sampling, DDIM {settings['sample_steps']} steps x "
            f"{settings['sample_repeats']} calls")
        sample = bench_sample(model, batch, settings["sample_steps"], settings["sample_repeats"],
                              jit_compile=mode == "xla")
        sample["achieved_gflops"] = sample["evals_per_second"] * result["forward_gflop_per_image"]
        result["sample"][mode] = sample
        log(f"{name} [{mode}]: {sample['evals_per_second']:.1f} evals/s, "
            f"{sample['achieved_gflops']:.1f} GFLOP/s (first call {sample['first_call_seconds']:.1f} s)")
        del model
    return result


# ------------------------------------------------------------------- main
def _choices(name, allowed):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"{name} must be a comma-separated subset of {', '.join(allowed)}. Received: {text!r}")
        return values
    return parse


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--configs", type=_choices("--configs", tuple(CONFIGS)),
                        default=list(CONFIGS), help=f"default: {','.join(CONFIGS)}")
    parser.add_argument("--modes", type=_choices("--modes", MODES), default=list(MODES),
                        help="default: eager,xla (eager: tf.function graph without XLA; "
                             "xla: jit_compile=True)")
    parser.add_argument("--steps", type=_positive_int, help=f"timed training steps ({FULL['steps']})")
    parser.add_argument("--warmup", type=int, help=f"untimed steps after the first ({FULL['warmup']})")
    parser.add_argument("--sample-steps", type=_positive_int,
                        help=f"DDIM steps per generate call ({FULL['sample_steps']})")
    parser.add_argument("--sample-repeats", type=_positive_int,
                        help=f"timed generate calls ({FULL['sample_repeats']})")
    parser.add_argument("--quick", action="store_true",
                        help="validate the script: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--output", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0. Received: {args.warmup}")
    settings = dict(QUICK if args.quick else FULL)
    for key in ("steps", "warmup", "sample_steps", "sample_repeats"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return args, settings


def main(argv=None):
    args, settings = parse_args(argv)
    # Keep stdout for the JSON alone: anything else (TF, XLA) written to
    # file descriptor 1 goes to stderr.
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    started = time.time()
    report = {
        "benchmark": "tfdiffusion/benchmarks/throughput.py",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dict(settings, quick=args.quick, configs=args.configs, modes=args.modes),
        "definitions": {
            "modes": {"eager": "model.compile(jit_compile=False): tf.function graph, no XLA",
                      "xla": "model.compile(jit_compile=True); generate(jit_compile=True)"},
            "train_images_per_second": "batch / median seconds of one DiffusionModel.train_step "
                                       "(model.train_function on a fixed in-memory batch, "
                                       "AdamW, linear schedule T=1000, EMA update included)",
            "sample_evals_per_second": "one evaluation = one image through the UNet once; "
                                       "batch * DDIM steps / median seconds of model.generate",
            "forward_gflop_per_image": "analytic: 2 x MACs of Conv2D, MatMul, BatchMatMul in "
                                       "the traced forward graph (elementwise ops excluded)",
            "train_gflop_per_image": "3 x forward_gflop_per_image",
            "compile_seconds": "first call (trace + compile + one step) minus the median step",
            "utilisation": "achieved GFLOP/s / matmul_ceiling.ceiling_gflops (the best median "
                           "float32 2048x2048 tf.matmul, graph or XLA, of the runs before and "
                           "after the models)",
            "traces": "times the Python train_step / sampling function was traced",
            "load_average": "1/5/15-minute load averages; load_average_start is near 0 on an "
                            "idle machine, load_average_end includes this benchmark's own threads",
        },
        "machine": machine_info(),
        "load_average_start": machine.load_average(),
    }
    log(f"machine: {report['machine']['cpu_model']}, {report['machine']['logical_cores']} cores, "
        f"load {report['load_average_start']}")
    # The ceiling is measured before and after the models (the load of a
    # shared machine changes); the best median of either is the ceiling.
    matmul = {"start": measure_matmul(settings["matmul_repeats"])}
    log(f"float32 matmul: {_format_matmul(matmul['start'])}")
    report["configs"] = {name: bench_config(name, settings, args.modes) for name in args.configs}
    matmul["end"] = measure_matmul(settings["matmul_repeats"])
    log(f"float32 matmul: {_format_matmul(matmul['end'])}")
    ceiling = max(matmul[when][mode]["median_gflops"] for when in matmul for mode in MODES)
    report["matmul_ceiling"] = dict(matmul, n=2048, gflop_per_call=2 * 2048**3 / 1e9,
                                    ceiling_gflops=ceiling)
    for result in report["configs"].values():
        for kind in ("train", "sample"):
            for timing in result[kind].values():
                timing["utilisation"] = timing["achieved_gflops"] / ceiling
    report["load_average_end"] = machine.load_average()
    report["wall_seconds"] = time.time() - started
    report["reference"] = REFERENCE

    text = json.dumps(report, indent=2)
    json_out.write(text + "\n")
    json_out.flush()
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
        log(f"wrote {args.output}")


if __name__ == "__main__":
    main()

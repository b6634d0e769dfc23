"""tfdiffusion against diffusers in the same run: training and sampling speed, memory, first step; prints JSON.

Usage (from the repo root; PyTorch and diffusers may live in another venv):

    python benchmarks/compare_diffusers.py --torch-python /path/to/torch-venv/bin/python \\
        --output benchmarks/results/compare.json
    python benchmarks/compare_diffusers.py --configs mnist-small --rounds 3 --quick
    python benchmarks/compare_diffusers.py --sweep      # batch 1..64 and image size 32..128
    python benchmarks/compare_diffusers.py --gradient-checkpointing --no-sample   # both sides recompute

Every configuration is a diffusers `UNet2DModel` config; tfdiffusion builds
the same architecture from it (`tfdiffusion.convert.unet_from_config`, the
converter whose outputs match diffusers' in tests/convert), so both sides
run the same network (the parameter counts are compared). Both train with
the linear DDPM schedule (T = 1000), epsilon prediction and MSE loss,
AdamW(2e-4, no weight decay) and an EMA of the weights (decay 0.9999),
dropout as configured, on a fixed in-memory batch (no input pipeline); both
sample with DDIM from the EMA weights.

Each side is a long-lived worker process (`compare_worker.py`) per
framework and precision: tfdiffusion float32 with XLA, tfdiffusion
`mixed_bfloat16` with XLA, diffusers float32 eager, and (sampling)
diffusers through `torch.compile`. After every worker has built its model
and run its first step, the driver interleaves the measurements: each round
every worker runs `--steps-per-round` training steps in turn (the order
rotating), while the others wait idle on a pipe, so load and frequency
changes hit all sides alike. Medians over all rounds are reported, with
ratios tfdiffusion / diffusers taken from the same run. The JSON records
the CPU's flags (AVX2 / AVX-512 / AVX512_BF16 / AMX), TensorFlow's oneDNN
state, thread counts, and each framework's float32 and bfloat16 matmul
ceilings (2048^3 and 1024^3, measured in the worker process itself).

Other numbers: forward GFLOP per image (PyTorch's FlopCounterMode on
diffusers' model; training = 3x forward) and the utilisation (achieved
GFLOP/s over the same process's float32 matmul ceiling); peak resident
memory (RSS) of each worker after its training rounds, and the growth over
its size after importing the framework; time from process start to the
end of the first training step, for tfdiffusion also a second start of the
same configuration against the XLA compilation cache the first one filled.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (benchmarks/machine.py)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare_worker.py")


def unet_config(size, channels, block_out_channels, attention_levels, groups=32, head_channels=None):
    """A diffusers `UNet2DModel` config: DDPM blocks, attention at `attention_levels`, one head."""
    levels = len(block_out_channels)
    down = ["AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(levels)]
    return dict(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=2,
                block_out_channels=list(block_out_channels), down_block_types=down,
                up_block_types=[b.replace("Down", "Up") for b in reversed(down)],
                attention_head_dim=head_channels or block_out_channels[max(attention_levels)],
                norm_num_groups=groups, dropout=0.1)


CONFIGS = {
    # DDPM's CIFAR-10 model (Ho et al. 2020): 35.7M parameters, attention at 16x16.
    "ddpm-cifar10": dict(batch=8, unet=unet_config(32, 3, (128, 256, 256, 256), (1,))),
    # A small MNIST model: attention at 7x7, 8 groups.
    "mnist-small": dict(batch=64, unet=unet_config(28, 1, (32, 64, 128), (2,), groups=8)),
    # 64x64 RGB (ImageNet-64 / CelebA-64 sized), attention at 16x16.
    "rgb-64": dict(batch=8, unet=unet_config(64, 3, (64, 128, 256, 256), (2,))),
}


def sweep_configs():
    """Batch 1..64 at 32x32 and image size 32..128 at batch 4, on one small RGB architecture."""
    def small(size):
        return unet_config(size, 3, (32, 64, 128), (2,), groups=8)
    configs = {f"sweep-32px-b{batch}": dict(batch=batch, unet=small(32)) for batch in (1, 4, 16, 64)}
    configs.update({f"sweep-{size}px-b4": dict(batch=4, unet=small(size)) for size in (64, 128)})
    return configs


def log(message):
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values):
    return float(statistics.median(values))


class Worker:
    """A `compare_worker.py` process answering one JSON line per command."""

    def __init__(self, name, python, framework, config, batch, mode, threads, env=None, torch_compile=False,
                 gradient_checkpointing=False):
        self.name = name
        command = [python, WORKER, framework, "--config", json.dumps(config), "--batch", str(batch),
                   "--mode", mode, "--threads", str(threads)] + (["--torch-compile"] if torch_compile else [])
        command += ["--gradient-checkpointing"] if gradient_checkpointing else []
        log(f"starting {name}")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        self.info = self._read()["ready"]
        log(f"{name} ready: first step {self.info['first_step_seconds']:.1f} s")

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited with {self.process.wait()} (see its stderr above)")
        return json.loads(line)

    def ask(self, op, **arguments):
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=60)


def interleaved(workers, op, rounds, **arguments):
    """`{name: [seconds, ...]}`: each round, every worker runs `op` once, the order rotating."""
    seconds = {w.name: [] for w in workers}
    for r in range(rounds):
        order = workers[r % len(workers):] + workers[:r % len(workers)]
        for worker in order:
            seconds[worker.name].extend(worker.ask(op, **arguments)["seconds"])
    return seconds


def bench_config(name, settings, args, cache_dir):
    """Starts the workers of one configuration, interleaves their rounds, returns the results."""
    batch, config = settings["batch"], settings["unet"]
    env = {"TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={cache_dir}"}
    common = dict(config=config, batch=batch, threads=args.threads,
                  gradient_checkpointing=args.gradient_checkpointing)
    result = {"batch": batch, "unet_config": config}
    trainers = []
    try:
        trainers.append(Worker("tfdiffusion-fp32", sys.executable, "tf", mode="fp32", env=env, **common))
        if not args.no_bf16:
            trainers.append(Worker("tfdiffusion-bf16", sys.executable, "tf", mode="bf16", env=env, **common))
        trainers.append(Worker("diffusers-fp32", args.torch_python, "torch", mode="fp32", **common))
        result["workers"] = {w.name: w.info for w in trainers}
        params = {w.name: w.info["params"] for w in trainers}
        if len(set(params.values())) != 1:
            raise RuntimeError(f"{name}: the two sides built different networks: parameters {params}")
        forward = trainers[-1].info["forward_gflop_per_image"]
        result.update(params=params["diffusers-fp32"], forward_gflop_per_image=forward,
                      train_gflop_per_image=3 * forward)
        log(f"{name}: {args.rounds} interleaved training rounds")
        steps = interleaved(trainers, "train", args.rounds, steps=args.steps_per_round)
        result["train"] = {}
        for worker in trainers:
            step = median(steps[worker.name])
            ceiling = worker.info["matmul_gflops"]
            fp32_ceiling = max(v for k, v in ceiling.items() if k.startswith("float32"))
            result["train"][worker.name] = {
                "images_per_second": batch / step, "step_seconds_median": step,
                "step_seconds": steps[worker.name],
                "achieved_gflops": batch / step * 3 * forward,
                "utilisation_of_fp32_matmul": batch / step * 3 * forward / fp32_ceiling,
                **worker.ask("memory")}
        if not args.no_sample:
            samplers = list(trainers)
            if not args.no_torch_compile:
                samplers.append(Worker("diffusers-fp32-torch.compile", args.torch_python, "torch",
                                       mode="fp32", torch_compile=True, **common))
            result["sample"] = {}
            for worker in samplers:
                log(f"{name}: sampling set-up of {worker.name}")
                result["sample"][worker.name] = {
                    "first_call_seconds": worker.ask("sample_setup", steps=args.sample_steps)[
                        "first_call_seconds"]}
            calls = interleaved(samplers, "sample", args.sample_rounds, calls=1)
            for worker in samplers:
                call = median(calls[worker.name])
                result["sample"][worker.name].update(
                    evals_per_second=batch * args.sample_steps / call, call_seconds_median=call,
                    call_seconds=calls[worker.name], num_steps=args.sample_steps)
            trainers = samplers
    finally:
        for worker in trainers:
            worker.close()
    if args.second_start:
        log(f"{name}: second start of tfdiffusion-fp32 against the filled compilation cache")
        again = Worker("tfdiffusion-fp32-second-start", sys.executable, "tf", mode="fp32", env=env, **common)
        again.close()
        result["second_start"] = {k: again.info[k] for k in (
            "import_seconds", "first_step_seconds", "start_to_first_step_done_seconds")}
    result["ratios"] = ratios(result)
    return result


def ratios(result):
    """tfdiffusion / diffusers from the same run (training images/s, sampling evals/s, peak RSS)."""
    out = {}
    train = result.get("train", {})
    base = train.get("diffusers-fp32")
    for name in ("tfdiffusion-fp32", "tfdiffusion-bf16"):
        if base and name in train:
            out[f"train {name} / diffusers-fp32"] = train[name]["images_per_second"] / base["images_per_second"]
            out[f"peak RSS {name} / diffusers-fp32"] = train[name]["peak_rss_mb"] / base["peak_rss_mb"]
    sample = result.get("sample", {})
    for base_name in ("diffusers-fp32", "diffusers-fp32-torch.compile"):
        for name in ("tfdiffusion-fp32", "tfdiffusion-bf16"):
            if base_name in sample and name in sample:
                out[f"sample {name} / {base_name}"] = (sample[name]["evals_per_second"]
                                                       / sample[base_name]["evals_per_second"])
    return out


def table(report):
    """A Markdown table of the medians and same-run ratios."""
    rows = ["| config | batch | train img/s tfdiffusion fp32 / bf16 / diffusers | ratio fp32 / bf16 "
            "| MFU tfdiffusion fp32 / diffusers | sample evals/s tfdiffusion / diffusers / + torch.compile "
            "| peak RSS MB tfdiffusion / diffusers |",
            "| --- | --- | --- | --- | --- | --- | --- |"]

    def get(section, name, key, fmt="{:.1f}"):
        value = section.get(name, {}).get(key)
        return "-" if value is None else fmt.format(value)

    def ratio(ratios, key):
        return "-" if key not in ratios else f"{ratios[key]:.2f}x"

    for name, result in report["configs"].items():
        train, sample, r = result.get("train", {}), result.get("sample", {}), result["ratios"]
        rows.append(
            f"| {name} | {result['batch']} "
            f"| {get(train, 'tfdiffusion-fp32', 'images_per_second')} / "
            f"{get(train, 'tfdiffusion-bf16', 'images_per_second')} / "
            f"{get(train, 'diffusers-fp32', 'images_per_second')} "
            f"| {ratio(r, 'train tfdiffusion-fp32 / diffusers-fp32')} / "
            f"{ratio(r, 'train tfdiffusion-bf16 / diffusers-fp32')} "
            f"| {get(train, 'tfdiffusion-fp32', 'utilisation_of_fp32_matmul', '{:.2f}')} / "
            f"{get(train, 'diffusers-fp32', 'utilisation_of_fp32_matmul', '{:.2f}')} "
            f"| {get(sample, 'tfdiffusion-fp32', 'evals_per_second')} / "
            f"{get(sample, 'diffusers-fp32', 'evals_per_second')} / "
            f"{get(sample, 'diffusers-fp32-torch.compile', 'evals_per_second')} "
            f"| {get(train, 'tfdiffusion-fp32', 'peak_rss_mb', '{:.0f}')} / "
            f"{get(train, 'diffusers-fp32', 'peak_rss_mb', '{:.0f}')} |")
    return "\n".join(rows)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, from {sorted(CONFIGS)} (default: all)")
    parser.add_argument("--sweep", action="store_true",
                        help="the batch and image-size sweep instead of --configs (sampling off)")
    parser.add_argument("--torch-python", default=sys.executable,
                        help="a Python with torch and diffusers (default: this one)")
    parser.add_argument("--threads", type=_positive_int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=_positive_int, default=5)
    parser.add_argument("--steps-per-round", type=_positive_int, default=2)
    parser.add_argument("--sample-steps", type=_positive_int, default=10)
    parser.add_argument("--sample-rounds", type=_positive_int, default=4)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="both sides recompute activations in the backward pass (tfdiffusion: "
                             "UNet(gradient_checkpointing=True); diffusers: enable_gradient_checkpointing())")
    parser.add_argument("--no-sample", action="store_true")
    parser.add_argument("--no-torch-compile", action="store_true")
    parser.add_argument("--second-start", action="store_true",
                        help="time a second tfdiffusion start against the filled XLA cache")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 step, 2 sampling rounds of 2 steps")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.sweep:
        args.selected = sweep_configs()
        args.no_sample = True
    else:
        names = [n for n in args.configs.split(",") if n]
        unknown = sorted(set(names) - set(CONFIGS))
        if unknown or not names:
            parser.error(f"--configs: unknown {unknown}; expected some of {sorted(CONFIGS)}")
        args.selected = {n: CONFIGS[n] for n in names}
    if args.quick:
        args.rounds, args.steps_per_round, args.sample_steps, args.sample_rounds = 2, 1, 2, 2
    if args.output and os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} is a folder; expected a file path")
    return args


def main(argv=None):
    args = parse_args(argv)
    report = {"benchmark": "tfdiffusion/benchmarks/compare_diffusers.py",
              "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine.machine_summary(), "load_average_start": machine.load_average(),
              "settings": {k: v for k, v in vars(args).items() if k != "selected"}, "configs": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfdiffusion-compare-xla-") as cache_root:
        for name, settings in args.selected.items():
            cache_dir = os.path.join(cache_root, name)
            os.makedirs(cache_dir)
            report["configs"][name] = bench_config(name, settings, args, cache_dir)
            log(f"{name}: {json.dumps(report['configs'][name]['ratios'])}")
    report["load_average_end"] = machine.load_average()
    report["wall_seconds"] = time.perf_counter() - start
    report["table"] = table(report)
    text = json.dumps(report, indent=2)
    print(text)
    print(report["table"], file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

"""One side of `compare_diffusers.py`: a long-lived process that trains and samples on command.

Started by the driver as

    python compare_worker.py tf    --config JSON --mode fp32|bf16 --threads N
    python compare_worker.py torch --config JSON --mode fp32       --threads N

It builds the model of the configuration (a diffusers `UNet2DModel` config;
tfdiffusion builds the same architecture from it with
`tfdiffusion.convert.unet_from_config`), measures the framework's matmul
ceilings, runs the first training step (timed from process start), prints
one JSON line `{"ready": ...}` and then answers one JSON line per command
read from stdin:

    {"op": "train", "steps": K}              -> {"seconds": [...]} per step
    {"op": "sample_setup", "steps": S}       -> {"first_call_seconds": ...}
    {"op": "sample", "calls": K}             -> {"seconds": [...]} per sampler call
    {"op": "memory"}                         -> {"peak_rss_mb": ..., "rss_after_import_mb": ...}
    {"op": "quit"}

Between commands the process waits on stdin and uses no CPU, so the driver
can interleave the two frameworks' measurements. Everything but the JSON
replies goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time

from machine import peak_resident_mb  # this folder: started as a script, it is on sys.path
from machine import resident_mb

START = time.perf_counter()
MATMUL_N = 2048  # float32; bfloat16 at half (emulated bf16 on AVX2 runs ~30x slower)


def _median_gflops(call, n, budget_seconds=4.0):
    """Median GFLOP/s of an n x n x n matmul `call`: one warm-up, then calls for about
    `budget_seconds` (at least 3, at most 10; emulated bfloat16 is slow on CPUs without it)."""
    call()
    seconds = []
    while len(seconds) < 3 or (len(seconds) < 10 and sum(seconds) < budget_seconds):
        begin = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - begin)
    return 2.0 * n**3 / statistics.median(seconds) / 1e9


def _first_call_seconds(call):
    """Seconds of the first `call()` (tracing, compiling), then one untimed warm-up call."""
    begin = time.perf_counter()
    call()
    first = time.perf_counter() - begin
    call()
    return first


def _reply(payload):
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ TensorFlow
class TensorFlowSide:
    """tfdiffusion's `DiffusionModel` (XLA, `FusedAdamW`, EMA) on the configuration."""

    def __init__(self, config, batch, mode, threads, gradient_checkpointing=False):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tfdiffusion as tfdiff  # first, as the `tfdiffusion` command: its defaults apply (oneDNN)
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        import keras

        from tfdiffusion.convert import unet_from_config

        self.tf, self.keras, self.tfdiff = tf, keras, tfdiff
        self.rss_after_import = resident_mb()
        self.import_seconds = time.perf_counter() - START
        from tensorflow.python.util import _pywrap_util_port

        self.info = {"framework": f"tensorflow {tf.__version__}, keras {keras.__version__}",
                     "onednn": bool(_pywrap_util_port.IsMklEnabled()),
                     "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                     "TF_XLA_FLAGS": os.environ.get("TF_XLA_FLAGS"),
                     "intra_op_threads": threads, "mode": mode}
        self.info["matmul_gflops"] = self._matmul_ceilings()
        if mode == "bf16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        keras.utils.set_random_seed(0)
        unet = unet_from_config(config, gradient_checkpointing=gradient_checkpointing)
        diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("linear", 1000))
        self.model = tfdiff.DiffusionModel(unet, diffusion, ema_decay=0.9999)
        self.model.compile(optimizer=tfdiff.FusedAdamW(2e-4, weight_decay=0.0), jit_compile=True)
        self.info["params"] = int(unet.count_params())
        size, channels = config["sample_size"], config["in_channels"]
        images = tf.random.stateless_uniform((batch, size, size, channels), seed=[5, 6], minval=-1.0,
                                             maxval=1.0)
        self.batch = batch
        dataset = tf.data.Dataset.from_tensors(images).repeat()
        begin = time.perf_counter()
        self.model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
        self.info["first_step_seconds"] = time.perf_counter() - begin
        self.info["start_to_first_step_done_seconds"] = time.perf_counter() - START
        self.info["import_seconds"] = self.import_seconds
        self.iterator = iter(dataset)

    def _matmul_ceilings(self):
        tf = self.tf
        result = {}
        for dtype in ("float32", "bfloat16"):
            n = MATMUL_N if dtype == "float32" else MATMUL_N // 2
            a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
            b = tf.cast(tf.random.stateless_normal([n, n], seed=[3, 4]), dtype)
            for jit in (False, True):
                fn = tf.function(tf.matmul, jit_compile=jit)
                result[f"{dtype}_{'xla' if jit else 'graph'}"] = _median_gflops(lambda: fn(a, b).numpy(), n)
        return result

    def train(self, steps):
        seconds = []
        for _ in range(steps):
            begin = time.perf_counter()
            float(self.model.train_function(self.iterator)["loss"])  # waits for the step
            seconds.append(time.perf_counter() - begin)
        return seconds

    def sample_setup(self, steps):
        self.sample_steps = steps
        return _first_call_seconds(self._sample_call)

    def _sample_call(self):
        return self.model.generate(num_images=self.batch, sampler="ddim", num_steps=self.sample_steps,
                                   seed=0, jit_compile=True)


# --------------------------------------------------------------------- PyTorch
class TorchSide:
    """diffusers' `UNet2DModel` trained as diffusers' `train_unconditional.py` does (AdamW, EMAModel)."""

    def __init__(self, config, batch, mode, threads, gradient_checkpointing=False):
        if mode != "fp32":
            raise SystemExit(f"torch worker: mode {mode!r} is not measured; expected 'fp32'")
        import torch
        import torch.nn.functional as F
        from diffusers import DDIMScheduler
        from diffusers import DDPMScheduler
        from diffusers import UNet2DModel
        from diffusers import __version__ as diffusers_version
        from diffusers.training_utils import EMAModel

        torch.set_num_threads(threads)
        self.torch, self.F = torch, F
        self.rss_after_import = resident_mb()
        self.info = {"framework": f"torch {torch.__version__}, diffusers {diffusers_version}",
                     "mkldnn": bool(torch.backends.mkldnn.is_available()),
                     "num_threads": torch.get_num_threads(), "mode": mode}
        self.info["matmul_gflops"] = self._matmul_ceilings()
        torch.manual_seed(0)
        self.unet = UNet2DModel(**config)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.info["params"] = int(sum(p.numel() for p in self.unet.parameters()))
        self.info["forward_gflop_per_image"] = self._forward_gflop(config)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=2e-4, weight_decay=0.0)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999, foreach=True)
        self.train_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.sample_scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        size, channels = config["sample_size"], config["in_channels"]
        self.images = torch.rand(batch, channels, size, size) * 2 - 1
        self.batch, self.shape = batch, (batch, channels, size, size)
        self.unet.train()
        begin = time.perf_counter()
        self.train(1)
        self.info["first_step_seconds"] = time.perf_counter() - begin
        self.info["start_to_first_step_done_seconds"] = time.perf_counter() - START

    def _matmul_ceilings(self):
        torch = self.torch
        result = {}
        for dtype in (torch.float32, torch.bfloat16):
            n = MATMUL_N if dtype == torch.float32 else MATMUL_N // 2
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            result[str(dtype).replace("torch.", "")] = _median_gflops(lambda: torch.mm(a, b), n)
        return result

    def _forward_gflop(self, config):
        from torch.utils.flop_counter import FlopCounterMode

        size, channels = config["sample_size"], config["in_channels"]
        with FlopCounterMode(display=False) as counter, self.torch.no_grad():
            self.unet(self.torch.zeros(1, channels, size, size), self.torch.tensor([10]))
        return counter.get_total_flops() / 1e9

    def train(self, steps):
        torch = self.torch
        seconds = []
        for _ in range(steps):
            begin = time.perf_counter()
            noise = torch.randn(self.shape)
            t = torch.randint(0, 1000, (self.batch,))
            x_t = self.train_scheduler.add_noise(self.images, noise, t)
            loss = self.F.mse_loss(self.unet(x_t, t).sample, noise)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.unet.parameters())
            float(loss.detach())
            seconds.append(time.perf_counter() - begin)
        return seconds

    def sample_setup(self, steps, compiled=False):
        torch = self.torch
        self.ema.copy_to(self.unet.parameters())  # diffusers samples with the EMA weights
        self.unet.eval()
        self.network = torch.compile(self.unet) if compiled else self.unet
        self.sample_steps = steps
        return _first_call_seconds(self._sample_call)

    def _sample_call(self):
        torch = self.torch
        scheduler = self.sample_scheduler
        scheduler.set_timesteps(self.sample_steps)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.shape, generator=generator)
        with torch.inference_mode():
            for t in scheduler.timesteps:
                x = scheduler.step(self.network(x, t).sample, t, x).prev_sample
        return x


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("tf", "torch"))
    parser.add_argument("--config", required=True, help="the UNet2DModel config as JSON")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--mode", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--torch-compile", action="store_true",
                        help="torch only: sample through torch.compile(unet)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (both frameworks' UNet option)")
    args = parser.parse_args()
    config = json.loads(args.config)
    side = (TensorFlowSide if args.framework == "tf" else TorchSide)(config, args.batch, args.mode, args.threads,
                                                                        args.gradient_checkpointing)
    _reply({"ready": side.info})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "train":
            _reply({"seconds": side.train(command["steps"])})
        elif op == "sample_setup":
            extra = {"compiled": args.torch_compile} if args.framework == "torch" else {}
            _reply({"first_call_seconds": side.sample_setup(command["steps"], **extra)})
        elif op == "sample":
            seconds = []
            for _ in range(command["calls"]):
                begin = time.perf_counter()
                side._sample_call()
                seconds.append(time.perf_counter() - begin)
            _reply({"seconds": seconds})
        elif op == "memory":
            _reply({"peak_rss_mb": peak_resident_mb(), "rss_after_import_mb": side.rss_after_import})
        elif op == "quit":
            return
        else:
            raise SystemExit(f"unknown command {op!r}")


if __name__ == "__main__":
    main()

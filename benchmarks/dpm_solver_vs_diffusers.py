"""diffusers' DPMSolverMultistepScheduler driven by a tfdiffusion model, against tfdiffusion's dpmpp_2m.

    # run with a Python that has torch and diffusers; --tf-python is one with tensorflow and tfdiffusion
    python benchmarks/dpm_solver_vs_diffusers.py --model runs/shapes/model.keras \\
        --tf-python .venv/bin/python --steps 20 --spacing trailing

The TensorFlow side (this file with `--worker`, started as a child process)
draws x_T as `generate` does, runs tfdiffusion's DPM-Solver++(2M) without
and with x_0 clipping, then answers the scheduler's network calls: the
guided epsilon of the model's EMA network at (x_t, t). The PyTorch side runs
diffusers' scheduler (solver_order=2, algorithm_type="dpmsolver++", the
model's betas as `trained_betas`; "clipping" is its `thresholding=True` with
`dynamic_thresholding_ratio=1.0, sample_max_value=1.0`, i.e. s = 1) from the
same x_T, and prints the largest difference of the final samples and the
class accuracy of both (the shipped shapes classifier; shapes models only).
A written check, not a test: it needs torch beside TensorFlow.
"""

import argparse
import io
import os
import struct
import subprocess
import sys

import numpy as np


def _send(stream, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream):
    size = struct.unpack("<Q", stream.read(8))[0]
    return dict(np.load(io.BytesIO(stream.read(size))))


def worker(args):
    """The TensorFlow side: tfdiffusion's samples, then eps on request, over stdin/stdout."""
    out, sys.stdout = sys.stdout.buffer, sys.stderr
    import keras
    import tensorflow as tf

    import tfdiffusion  # noqa: F401  (registers the classes for loading)
    from tfdiffusion import features, metrics, random, samplers, sampling

    model = keras.models.load_model(args.model)
    n = args.per_class * model.num_classes
    labels = np.repeat(np.arange(model.num_classes), args.per_class).astype(np.int32)

    def network(x, t, **kwargs):
        return model.ema_network(x, t, training=False, **kwargs)

    guided = samplers.classifier_free_guidance(network, tf.constant(args.guidance_scale), model.null_label,
                                               model.image_shape[-1])
    x_T, _ = sampling.initial_noise(random.seed_pair(args.seed), 0, (n,) + model.image_shape)
    ours = {}
    for clip in (False, True):
        solver = samplers.get_sampler("dpmpp_2m")(model.diffusion, spacing=args.spacing, clip_denoised=clip)
        ours[f"x0_clip{int(clip)}"] = solver.sample(guided, x_T, args.steps, args.seed, {"y": labels}).numpy()
    _send(out, x_T=x_T.numpy(), betas=model.diffusion.betas, **ours)
    classifier = features.shapes_features("logits")
    while True:
        message = _receive(sys.stdin.buffer)
        if "done" in message:
            return
        if "images" in message:
            _send(out, accuracy=np.array(metrics.class_accuracy(message["images"], labels, classifier)))
            continue
        t = tf.fill([n], int(message["t"]))
        _send(out, eps=guided(tf.constant(message["x"]), t, y=tf.constant(labels)).numpy())


def _to_uint8(x):
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a .keras class-conditional epsilon-prediction model")
    parser.add_argument("--tf-python", default=sys.executable, help="the Python with tensorflow and tfdiffusion")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--spacing", default="trailing", choices=("leading", "trailing", "linspace"))
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch
    from diffusers import DPMSolverMultistepScheduler

    argv = [args.tf_python, os.path.abspath(__file__), "--worker", "--model", args.model, "--steps", str(args.steps),
            "--spacing", args.spacing, "--per-class", str(args.per_class), "--guidance-scale",
            str(args.guidance_scale), "--seed", str(args.seed)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    first = _receive(child.stdout)
    for clip in (False, True):
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=len(first["betas"]), trained_betas=first["betas"].astype(np.float32),
            solver_order=2, algorithm_type="dpmsolver++", timestep_spacing=args.spacing, thresholding=clip,
            dynamic_thresholding_ratio=1.0, sample_max_value=1.0)
        scheduler.set_timesteps(args.steps)
        x = torch.from_numpy(first["x_T"]).permute(0, 3, 1, 2).double() * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            _send(child.stdin, x=x.permute(0, 2, 3, 1).float().numpy(), t=np.array(int(t)))
            eps = torch.from_numpy(_receive(child.stdout)["eps"]).permute(0, 3, 1, 2).double()
            x = scheduler.step(eps, t, x).prev_sample
        theirs, ours = x.permute(0, 2, 3, 1).numpy(), first[f"x0_clip{int(clip)}"]
        accuracy = {}
        for name, x0 in (("diffusers", theirs), ("tfdiffusion", ours)):
            _send(child.stdin, images=_to_uint8(x0))
            accuracy[name] = float(_receive(child.stdout)["accuracy"])
        print(f"{args.spacing}, {args.steps} steps, x0 {'clipped' if clip else 'not clipped'}: timesteps "
              f"{scheduler.timesteps[:3].tolist()}..., first sigma {float(scheduler.sigmas[0]):.4g}; "
              f"max |tfdiffusion - diffusers| {np.abs(ours - theirs).max():.3g} (max |x_0| {np.abs(theirs).max():.3g}); "
              f"equal uint8 pixels {np.mean(_to_uint8(ours) == _to_uint8(theirs)):.4f}; class accuracy diffusers "
              f"{accuracy['diffusers']:.3f}, tfdiffusion {accuracy['tfdiffusion']:.3f}", flush=True)
    _send(child.stdin, done=np.array(1))
    child.wait()


if __name__ == "__main__":
    main()

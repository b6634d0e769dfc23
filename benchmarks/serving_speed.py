"""How fast does an exported SavedModel load and answer? Size, fresh-process load time, generate requests/second.

    python benchmarks/serving_speed.py --model saved_models/shapes

Runs a fresh Python process that imports only TensorFlow (as a model server
would): times `tf.saved_model.load`, the first `generate` call (graph
optimisation; what TF Serving's warm-up requests pay at load time), then
`--repeats` calls of `--num-images` images with `--steps` steps, one after
another, and reports requests/second. Prints JSON.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

TIMED = r"""
import json, sys, time
import numpy as np
import tensorflow as tf

path, signature_name, num_images, steps, repeats, guidance = sys.argv[1:7]
start = time.perf_counter()
loaded = tf.saved_model.load(path)
load_seconds = time.perf_counter() - start
signature = loaded.signatures[signature_name]
inputs = signature.structured_input_signature[1]
values = dict(seed=0, num_steps=int(steps), labels=np.arange(int(num_images)) % 8, num_images=int(num_images),
              guidance_scale=float(guidance), eta=0.0)
tensors = {name: tf.constant(np.asarray(values[name], spec.dtype.as_numpy_dtype)) for name, spec in inputs.items()}
start = time.perf_counter()
signature(**tensors)
first_seconds = time.perf_counter() - start
times = []
for seed in range(int(repeats)):
    tensors["seed"] = tf.constant(seed, tf.int64)
    start = time.perf_counter()
    signature(**tensors)["images"].numpy()
    times.append(time.perf_counter() - start)
print(json.dumps(dict(load_seconds=load_seconds, first_call_seconds=first_seconds, call_seconds=times,
                      imported_tfdiffusion="tfdiffusion" in sys.modules)))
"""


def directory_size(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a version directory, or BASE/NAME (its latest version)")
    parser.add_argument("--signature", default="generate", help="signature to time (default: generate)")
    parser.add_argument("--num-images", type=int, default=4, help="images per request (default: 4)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per request (default: 20)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="guidance scale (default: 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed requests (default: 10)")
    args = parser.parse_args(argv)

    from tfdiffusion.export import resolve_version_dir

    path = resolve_version_dir(args.model)
    load_before = os.getloadavg()
    result = subprocess.run([sys.executable, "-c", TIMED, path, args.signature, str(args.num_images),
                             str(args.steps), str(args.repeats), str(args.guidance_scale)],
                            capture_output=True, text=True, check=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    timed = json.loads(result.stdout.strip().splitlines()[-1])
    calls = sorted(timed["call_seconds"])
    median = calls[len(calls) // 2]
    print(json.dumps({
        "model": path, "size_bytes": directory_size(path),
        "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "request": {"signature": args.signature, "num_images": args.num_images, "steps": args.steps,
                    "guidance_scale": args.guidance_scale},
        "fresh_process_load_seconds": round(timed["load_seconds"], 2),
        "first_call_seconds": round(timed["first_call_seconds"], 2),
        "median_call_seconds": round(median, 3),
        "requests_per_second": round(1.0 / median, 2),
        "imported_tfdiffusion": timed["imported_tfdiffusion"],
    }, indent=2))


if __name__ == "__main__":
    main()
